// The nested KVM sandbox (tools/sandbox/run.sh), always through QEMU software emulation
// even where the host has KVM: what runs inside sees /dev/kvm, the caller's cwd and
// environment, separate stdout/stderr and a writable output dir; a dead sandbox is told
// apart from a failing command. Slow: each case boots a TCG machine (~7-15 s).
// runs: host
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { needs } from '../needs';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeGuestCommand, ensureDefaultGuest, parseInitMarker, projectRoot } from '../../vmm/default-guest';

const root = projectRoot();
const runSh = join(root, 'tools/sandbox/run.sh');
// tools/test.mjs runs this file on the host side (the `runs: host` line above). Run by hand
// inside a sandbox, emulating again inside emulation would be far too slow: the cases about
// the sandbox itself are skipped, with that reason, and the rest run through run.sh --native.
const inside = Boolean(process.env.TSVMM_IN_SANDBOX);
const outerOnly = needs(inside ? 'already inside a sandbox: the sandbox\'s own mechanics are tested from the host (tools/test.mjs does)' : undefined);

function sandbox(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(runSh, [inside ? '--native' : '--sandbox', ...args], {
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
  if (!inside) assert.match(r.stderr, /software emulation/);
});

outerOnly('cwd, environment, stdout/stderr and the output dir', () => {
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

// A sandbox that cannot boot: Debian's kernel stops at once on a CPU without long mode. (A
// 3-second limit alone no longer does it: a fast host boots the sandbox and runs `true` in it.)
const NO_BOOT = { TSVMM_SANDBOX_CPU: 'EPYC,+svm,+npt,-lm' };

outerOnly('a sandbox that never reports is retried once, then exit 125', () => {
  const r = sandbox(['--timeout', '3', '--', 'true'], NO_BOOT);
  assert.is(r.status, 125);
  assert.match(r.stderr, /attempt 1 died/);
  assert.match(r.stderr, /attempt 2 died/);
});

outerOnly('--attempts 1: a dead sandbox is not retried (tools/test.mjs reruns by itself, per file)', () => {
  const r = sandbox(['--timeout', '3', '--attempts', '1', '--', 'true'], NO_BOOT);
  assert.is(r.status, 125);
  assert.match(r.stderr, /attempt 1 died/);
  assert.not.match(r.stderr, /attempt 2/);
  assert.match(r.stderr, /died 1 time\(s\); giving up/);
});

outerOnly('a sandbox kernel that freezes silently is ended by the heartbeat, not the time limit', () => {
  // Stopping every process but init and the job stops init's heartbeat: to run.sh that is a frozen kernel.
  const t0 = Date.now();
  const r = sandbox(['--timeout', '250', '--', 'sh', '-c', 'kill -STOP -1; sleep 240'], { TSVMM_SANDBOX_HANG_SECS: '20' });
  assert.is(r.status, 125);
  assert.match(r.stderr, /attempt 1 died: the sandbox kernel froze \(no heartbeat for 20s\)/);
  assert.match(r.stderr, /attempt 2 died/);
  assert.ok(Date.now() - t0 < 240_000, 'ended long before the job would have');
});

outerOnly('no SVM in the emulated CPU: exit 125 with the reason, not the command\'s status', () => {
  const r = sandbox(['--', 'true'], { TSVMM_SANDBOX_CPU: 'EPYC,-svm' });
  assert.is(r.status, 125);
  assert.match(r.stderr, /no \/dev\/kvm inside the sandbox/);
});

// The default guest (docs/default-guest.md) on real (nested) KVM, with QEMU as the VMM so
// that it is checked independently of tsvmm: the init's markers, tsvmm.cmd, and a panic
// reaching the VMM through pvpanic (ACPI QEMU0001 bound by the stock pvpanic-mmio).
test('the default guest boots on KVM inside the sandbox: markers, tsvmm.cmd, pvpanic', async () => {
  const g = await ensureDefaultGuest();
  const out = mkdtempSync(join(tmpdir(), 'tsvmm-sandbox-guest-'));
  try {
    const qemu = (append: string) =>
      `timeout 120 qemu-system-x86_64 -M microvm,acpi=on,rtc=on -accel kvm -cpu host -m 256M -smp 2 ` +
      `-nodefaults -display none -serial stdio -no-reboot -device pvpanic -action panic=exit-failure ` +
      `-kernel ${g.kernel} -initrd ${g.initrd} -append "console=ttyS0 quiet ${append}"`;
    const cmd = encodeGuestCommand('test -d /dev/fd/ && ls /sys/bus/platform/drivers/pvpanic-mmio | grep QEMU0001; exit 3');
    const panic = encodeGuestCommand('echo c >/proc/sysrq-trigger');
    writeFileSync(join(out, 'guest.sh'), `${qemu(cmd)}; echo "qemu=$?"\n${qemu(`loglevel=0 ${panic}`)}; echo "qemu=$?"\n`);
    const r = sandbox(['--out', out, '--', 'sh', join(out, 'guest.sh')]);
    assert.is(r.status, 0, r.stderr);
    const lines = r.stdout.split('\n').map((l) => l.trim());
    const markers = lines.map(parseInitMarker).filter((m) => m !== null);
    const info = markers[0];
    assert.ok(info?.kind === 'info' && info.cpus === 2 && info.memKb > 100_000, JSON.stringify(info));
    assert.equal(markers.slice(1, 3), [{ kind: 'ready' }, { kind: 'exit', status: 3 }]);
    assert.ok(lines.includes('QEMU0001:00'), 'pvpanic-mmio bound to the ACPI device');
    // First boot powered off (QEMU 0); the panic made QEMU exit with failure (1).
    assert.equal(lines.filter((l) => l.startsWith('qemu=')), ['qemu=0', 'qemu=1']);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test.run();
