// `tsvmm exec` for test suites, on the default guest, as a test suite would call it: --env,
// --cwd, stdin, --put making parents (keeping the file's mode), --get also after a failure,
// --json's last line, --console-log; `run --timeout` (124); `exec --api-sock` into a running VM,
// several at once, same streams and statuses. Many VMs at once: many-vms.test.ts.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { VmEntry } from '../../vmm/api/registry';
import { ROOT, TSVMM, agentOf, tsvmm, type RunResult } from './helpers';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-exec-suite-'));
// A registry of our own, so `tsvmm ps` sees only this file's VMs.
const env = { ...process.env, XDG_RUNTIME_DIR: join(dir, 'run') };
process.env.XDG_RUNTIME_DIR = env.XDG_RUNTIME_DIR;
test.after(() => rmSync(dir, { recursive: true, force: true }));

const ps = async (): Promise<VmEntry[]> => {
  const r = await tsvmm(['ps', '--json'], { env });
  assert.is(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as VmEntry[];
};

test('one exec with --env, --cwd, stdin, --put (parents made, mode kept), --get, --json and --console-log', async () => {
  const script = join(dir, 't.sh');
  writeFileSync(script, '#!/bin/sh\necho "script ran as $(stat -c %a "$0")"\n');
  chmodSync(script, 0o750);
  const consoleLog = join(dir, 'console.log');
  const result = join(dir, 'result.txt');
  const r = await tsvmm([
    'exec', '--env', 'FOO=bar baz', '--env', 'EMPTY=', '--cwd', '/tmp', '--put', `${script}:/root/new/deeper/t.sh`,
    '--get', `/root/out/r.txt:${result}`, '--json', '--console-log', consoleLog, '--',
    'sh', '-c', 'echo "foo=$FOO empty=[$EMPTY] cwd=$(pwd)"; cat; /root/new/deeper/t.sh; mkdir -p /root/out; echo result >/root/out/r.txt; ' +
      'echo "<4>exec-suite: a warning" >/dev/kmsg; echo "<6>exec-suite: routine" >/dev/kmsg',
  ], { input: 'from stdin\n', env });
  assert.is(r.code, 0, r.stderr);
  const lines = r.stdout.trimEnd().split('\n');
  assert.equal(lines.slice(0, 3), ['foo=bar baz empty=[] cwd=/tmp', 'from stdin', 'script ran as 750']);
  const report = JSON.parse(lines[3]!) as { status: number; exitCode: number; signal: null; timedOut: boolean; timings: Record<string, number>; consoleLog: string };
  assert.is(lines.length, 4, 'the JSON line is the last one');
  assert.is(report.status, 0);
  assert.is(report.exitCode, 0);
  assert.is(report.signal, null);
  assert.is(report.timedOut, false);
  assert.is(report.consoleLog, consoleLog);
  for (const t of ['nodeMs', 'bootMs', 'agentMs', 'commandMs', 'totalMs']) assert.ok(report.timings[t]! > 0, `${t} = ${report.timings[t]}`);
  assert.ok(report.timings.totalMs! > report.timings.bootMs! + report.timings.commandMs!);
  assert.is(readFileSync(result, 'utf8'), 'result\n');
  // The console is quiet by default (loglevel=5): warnings reach the log, routine lines and the
  // boot's banner do not; the init's own lines are not the kernel's and always do.
  const kernelLog = readFileSync(consoleLog, 'utf8');
  assert.match(kernelLog, 'tsvmm-init: ready');
  assert.match(kernelLog, 'exec-suite: a warning');
  assert.not.match(kernelLog, 'exec-suite: routine');
  assert.not.match(kernelLog, /Linux version \d/);
});

test('--get copies out after the command failed; the status stays the command\'s', async () => {
  const log = join(dir, 'failed.log');
  const r = await tsvmm(['exec', '--get', `/root/log.txt:${log}`, '--', 'sh', '-c', 'echo partial >/root/log.txt; exit 3'], { env });
  assert.is(r.code, 3, r.stderr);
  assert.is(readFileSync(log, 'utf8'), 'partial\n');
});

test('run --timeout stops the VM and exits 124', async () => {
  const r = await tsvmm(['run', '--timeout', '30'], { env });
  assert.is(r.code, 124, r.stderr);
  assert.match(r.stderr, '--timeout 30 s expired');
});

test('exec --api-sock runs commands in a running VM, several at once, with their streams and statuses', async () => {
  const sock = join(dir, 'api.sock');
  const uds = join(dir, 'v.sock');
  const child = spawn(process.execPath, [TSVMM, 'run', '--api-sock', sock, '--vsock', `cid=3,uds=${uds}`], { cwd: ROOT, env, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr.on('data', (b) => (log += b));
  const closed = new Promise<number | null>((r) => child.on('close', r));
  try {
    await agentOf(uds);
    const file = join(dir, 'in.txt');
    writeFileSync(file, 'put through the API\n');
    const runs = await Promise.all([1, 2, 3].map((i) => tsvmm([
      'exec', '--api-sock', sock, '--put', `${file}:/root/api/${i}/in.txt`, '--',
      'sh', '-c', `cat /root/api/${i}/in.txt; cat; echo err-${i} >&2; exit ${i}`,
    ], { input: `stdin-${i}\n`, env })));
    runs.forEach((r: RunResult, idx) => {
      const i = idx + 1;
      assert.is(r.code, i, r.stderr);
      assert.is(r.stdout, `put through the API\nstdin-${i}\n`);
      assert.match(r.stderr, `err-${i}\n`);
    });
    const listed = await ps();
    assert.ok(listed.some((v) => v.api_sock === sock && v.pid === child.pid), JSON.stringify(listed));
    const refused = await tsvmm(['exec', '--api-sock', sock, '--kernel', '/x', '--', 'true'], { env });
    assert.is(refused.code, 2);
    assert.match(refused.stderr, '--api-sock runs CMD in a VM that is already running');
  } finally {
    child.kill('SIGTERM');
    assert.is(await closed, 143, log);
  }
});

test.run();
