// Real sched_setaffinity / sched_getaffinity on this process's own threads (no KVM needed).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import { SysError } from '../../../kvm/errors';
import { getThreadAffinity, setThreadAffinity } from '../../../vmm/scheduler/affinity';
import { parseCpuList, readAllowedCpus } from '../../../vmm/scheduler/topology';

/** What the kernel says about one thread, read independently of the code under test. */
const procAffinity = (tid: number): number[] =>
  parseCpuList(/^Cpus_allowed_list:\s*(.*)$/m.exec(readFileSync(`/proc/self/task/${tid}/status`, 'utf8'))![1]!);

const allowed = readAllowedCpus();

test('get matches /proc for the main thread', () => {
  assert.equal(getThreadAffinity(process.pid), procAffinity(process.pid));
  assert.equal(getThreadAffinity(0), procAffinity(process.pid));
});

test('set one CPU on the main thread, read back through /proc, restore', () => {
  const original = getThreadAffinity(process.pid);
  const target = allowed[allowed.length - 1]!;
  try {
    setThreadAffinity(process.pid, [target]);
    assert.equal(procAffinity(process.pid), [target]);
    assert.equal(getThreadAffinity(process.pid), [target]);
  } finally {
    setThreadAffinity(process.pid, original);
  }
  assert.equal(procAffinity(process.pid), original);
});

test('pins another thread by its tid without touching the main thread', async () => {
  const koffiPath = createRequire(import.meta.url).resolve('koffi');
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    const koffi = require(workerData);
    const gettid = koffi.load('libc.so.6').func('int gettid()');
    parentPort.postMessage(gettid());
    parentPort.once('message', () => process.exit(0));`;
  const worker = new Worker(code, { eval: true, workerData: koffiPath });
  const tid = await new Promise<number>((resolve) => worker.once('message', resolve));
  try {
    assert.ok(tid !== process.pid);
    const main = procAffinity(process.pid);
    const target = allowed[0]!;
    setThreadAffinity(tid, [target]);
    assert.equal(procAffinity(tid), [target]);
    assert.equal(getThreadAffinity(tid), [target]);
    assert.equal(procAffinity(process.pid), main);
  } finally {
    worker.postMessage('bye');
    await new Promise((resolve) => worker.once('exit', resolve));
  }
});

test('errors name the call and the errno', () => {
  const hasCode = (call: string, code: string) => (e: unknown): boolean =>
    e instanceof SysError && e.call === call && e.code === code && e.message.includes(call) && e.message.includes(code);
  assert.throws(() => setThreadAffinity(0x7fffffff, [allowed[0]!]), hasCode('sched_setaffinity', 'ESRCH'));
  assert.throws(() => getThreadAffinity(0x7fffffff), hasCode('sched_getaffinity', 'ESRCH'));
  // A CPU that is not online: the kernel refuses the whole mask.
  assert.throws(() => setThreadAffinity(process.pid, [8000]), hasCode('sched_setaffinity', 'EINVAL'));
  assert.equal(procAffinity(process.pid), getThreadAffinity(process.pid));
  assert.throws(() => setThreadAffinity(process.pid, []), (e: unknown) => e instanceof RangeError);
  assert.throws(() => setThreadAffinity(process.pid, [-1]), (e: unknown) => e instanceof RangeError);
  assert.throws(() => setThreadAffinity(process.pid, [8192]), (e: unknown) => e instanceof RangeError);
});

test.run();
