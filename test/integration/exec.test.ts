// `tsvmm exec` against the stock kernel: exit codes, stderr kept apart from stdout, --put,
// --timeout, and 127 when the command does not exist. A SIGTERM while the guest boots says
// what the machine was doing: each vCPU's state and the console's last lines.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tsvmm } from './helpers';

/** exec's console is quiet by default (vmm/config.ts QUIET_CONSOLE): the kernel's boot log stays off it. */
const EXEC = ['exec'];

test('exit status, stdout and stderr are the command\'s', async () => {
  const r = await tsvmm([...EXEC, '--', 'sh', '-c', 'echo to-out; echo to-err >&2; exit 7']);
  assert.is(r.code, 7, r.stderr);
  assert.is(r.stdout, 'to-out\n');
  assert.match(r.stderr, 'to-err\n');
  assert.not.match(r.stdout, 'to-err');
});

test('--put copies a file in before the command runs', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-put-'));
  const src = join(dir, 'hello.sh');
  writeFileSync(src, 'echo "put works: $1"\n');
  const r = await tsvmm([...EXEC, '--put', `${src}:/root/hello.sh`, '--', 'sh', '/root/hello.sh', 'yes']);
  assert.is(r.code, 0, r.stderr);
  assert.is(r.stdout, 'put works: yes\n');
});

test('a signal ends the command: 128 + signo; --timeout gives 124', async () => {
  const killed = await tsvmm([...EXEC, '--', 'sh', '-c', 'kill -9 $$']);
  assert.is(killed.code, 137, killed.stderr);
  const slow = await tsvmm([...EXEC, '--timeout', '90', '--json', '--', 'sleep', '600']);
  assert.is(slow.code, 124, slow.stderr);
  // The timeout ended the command, not a boot that took longer than it.
  const report = JSON.parse(slow.stdout.trim().split('\n').pop()!) as { timedOut: boolean; timings: { bootMs: number | null } };
  assert.is(report.timedOut, true);
  assert.ok(report.timings.bootMs !== null, `the agent never answered within 90 s: ${slow.stderr}`);
});

test('a missing command exits 127 (as in a shell or docker) and says why, without a hang', async () => {
  const r = await tsvmm([...EXEC, '--', '/no/such/program']);
  assert.is(r.code, 127, r.stderr);
  assert.match(r.stderr, 'exec /no/such/program: No such file or directory');
  assert.is(r.stdout, '');
});

test('SIGTERM during the boot: each vCPU\'s state and the console tail, which matches the console log', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-diag-'));
  const logFile = join(dir, 'console.log');
  // Interrupted once the console has printed a few lines (the kernel prints nothing on the
  // UART before its console driver registers, so a fixed early timeout could see none). The
  // boot log is what this reads, so the console is verbose here, on purpose: a quiet one
  // prints two lines before `true` has run.
  const lines = () => (existsSync(logFile) ? readFileSync(logFile, 'latin1').split('\n').length - 1 : 0);
  let stopped = false;
  const r = await tsvmm(['exec', '--verbose-console', '--vcpus', '2', '--console-log', logFile, '--json', '--', 'true'], {
    timeoutMs: 280_000,
    onStart: (child) => {
      const poll = setInterval(() => {
        if (lines() < 3 || stopped) return;
        stopped = true;
        clearInterval(poll);
        child.kill('SIGTERM');
      }, 100);
      child.once('close', () => clearInterval(poll));
    },
  });
  assert.ok(stopped, `the console never printed 3 lines: ${r.stderr}`);
  assert.is(r.code, 125, r.stderr);
  const report = JSON.parse(r.stdout.trim().split('\n').pop()!) as { timedOut: boolean; error: string };
  assert.is(report.timedOut, false);
  for (const text of [r.stderr, report.error]) {
    assert.match(text, /the guest agent was interrupted after \d+\.\d s of booting/);
    // Both vCPUs were parked and read (an AP may still wait for its SIPI this early).
    assert.match(text, /vCPU 0 \(tid \d+\): worker [^;]+; mp_state [a-zA-Z ()/]+; rip 0x[0-9a-f]+ IF=[01]; thread [A-Z]/, text);
    assert.match(text, /vCPU 1 \(tid \d+\): worker [^;]+; mp_state /, text);
    assert.match(text, /\n {4}LAPIC (on|OFF), TPR 0x[0-9a-f]+, PPR 0x[0-9a-f]+, IRR /);
    assert.match(text, /devices: virtio-vsock status 0x[0-9a-f]+ /);
  }
  const tail = r.stderr.split('\n').filter((l) => l.startsWith('| ')).map((l) => l.slice(2));
  assert.ok(tail.length >= 3, r.stderr);
  // The tail is the console's, in order: a contiguous piece of what the console log got.
  assert.ok(readFileSync(logFile, 'latin1').replaceAll('\r', '').includes(tail.join('\n')), `${tail.join('\n')}\nnot in the console log`);
});

test.run();
