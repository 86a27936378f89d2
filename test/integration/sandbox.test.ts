// The nested KVM sandbox (tools/sandbox/run.sh), always through QEMU software emulation
// even where the host has KVM: what runs inside sees /dev/kvm, the caller's cwd and
// environment, separate stdout/stderr and a writable output dir; a dead sandbox is told
// apart from a failing command. Slow: each case boots a TCG machine (~7-15 s).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectRoot } from '../../vmm/default-guest';

const root = projectRoot();
const runSh = join(root, 'tools/sandbox/run.sh');

function sandbox(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(runSh, ['--sandbox', ...args], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 300_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('the command sees /dev/kvm and its exit status comes back', () => {
  const r = sandbox(['--', 'sh', '-c', 'test -c /dev/kvm && exit 7']);
  assert.is(r.status, 7, r.stderr);
  assert.match(r.stderr, /software emulation/);
});

test('cwd, environment, stdout/stderr and the output dir', () => {
  const out = mkdtempSync(join(tmpdir(), 'tsvmm-sandbox-test-'));
  try {
    const script = [
      'pwd',
      'echo "tsvmm=$TSVMM_PROBE ci=${CI-unset}"',
      'echo to-stderr >&2',
      'cat <(echo procsub)', // needs /dev/fd inside
      'echo result >"$TSVMM_SANDBOX_OUT/result.txt"',
      'touch /tmp/scratch && echo tmp-ok',
      'touch /etc/tsvmm-must-fail 2>/dev/null || echo root-ro',
    ].join('; ');
    const r = sandbox(['--out', out, '--', 'bash', '-c', script], { TSVMM_PROBE: 'a b' });
    assert.is(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim().split('\n'), [root, `tsvmm=a b ci=${process.env.CI ?? 'unset'}`, 'procsub', 'tmp-ok', 'root-ro']);
    assert.match(r.stderr, /^to-stderr$/m);
    assert.not.match(r.stdout, /to-stderr/);
    assert.is(readFileSync(join(out, 'result.txt'), 'utf8'), 'result\n');
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test('a sandbox that never reports is retried once, then exit 125', () => {
  const r = sandbox(['--timeout', '3', '--', 'true']);
  assert.is(r.status, 125);
  assert.match(r.stderr, /attempt 1 died/);
  assert.match(r.stderr, /attempt 2 died/);
});

test('no SVM in the emulated CPU: exit 125 with the reason, not the command\'s status', () => {
  const r = sandbox(['--', 'true'], { TSVMM_SANDBOX_CPU: 'EPYC,-svm' });
  assert.is(r.status, 125);
  assert.match(r.stderr, /no \/dev\/kvm inside the sandbox/);
});

test.run();
