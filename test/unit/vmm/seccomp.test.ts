// The vCPU thread's seccomp filter, installed for real in a worker thread (no KVM needed):
// what the policy allows still works there, every other call is refused with EPERM, the
// calls that only a taken-over thread would make kill the process (SIGSYS, checked in a child
// process), ioctl passes only as KVM_RUN on the thread's own vCPU fd, and other threads of
// the process are not affected. The filter's bytes and syscall numbers: bpf/seccomp.test.ts.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import koffi from 'koffi';
import { installSeccompFilter, eventfd } from '../../../kvm/libc';
import { KVM } from '../../../kvm/ioctl';
import { vcpuFilter } from '../../../vmm/vcpu/seccomp';

const FIONREAD = 0x541b;
const SYS_GETUID = 102;

/** Runs in the worker: installs the vCPU filter for `fd`, then tries calls and reports errno names. */
function workerSide(): void {
  const { fd, other, childMode } = workerData as { fd: number; other: number; childMode?: string };
  const lib = koffi.load('libc.so.6');
  const ioctl = lib.func('ioctl', 'int', ['int', 'unsigned long', 'unsigned long']);
  const syscall0 = lib.func('syscall', 'long', ['long']);
  const errno = (r: number): string => (r < 0 ? `errno ${koffi.errno()}` : 'ok');
  installSeccompFilter(vcpuFilter(fd, KVM.RUN));
  if (childMode === 'exec') {
    // execve straight from the thread (a child_process would fail earlier, on its pipes).
    const execve = lib.func('execve', 'int', ['str', 'void *', 'void *']);
    execve('/bin/true', null, null); // on the kill list
    parentPort!.postMessage({ survived: true });
    return;
  }
  const out: Record<string, string> = {};
  out.futex = Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1); // allowed
  out.getuid = errno(Number(syscall0(SYS_GETUID)));
  try {
    statSync('/');
    out.stat = 'ok';
  } catch (e) {
    out.stat = (e as NodeJS.ErrnoException).code ?? String(e);
  }
  try {
    closeSync(openSync('/proc/self/status', 'r'));
    out.open = 'ok';
  } catch (e) {
    out.open = (e as NodeJS.ErrnoException).code ?? String(e);
  }
  out.kvmRunOwnFd = errno(ioctl(fd, KVM.RUN, 0) as number); // passes the filter; an eventfd is no vCPU: ENOTTY
  out.otherIoctlOwnFd = errno(ioctl(fd, FIONREAD, 0) as number);
  out.kvmRunOtherFd = errno(ioctl(other, KVM.RUN, 0) as number);
  out.garbage = JSON.stringify(Array.from({ length: 200_000 }, (_, i) => ({ i }))).length > 0 ? 'ok' : 'no'; // V8 heap work
  parentPort!.postMessage(out); // write to main's wakeup fd: allowed
}

function runWorker(childMode?: string): Promise<Record<string, string | boolean>> {
  const fd = eventfd();
  const other = eventfd();
  return new Promise((resolve, reject) => {
    const w = new Worker(fileURLToPath(import.meta.url), { workerData: { fd, other, childMode } });
    w.once('message', resolve);
    w.once('error', reject);
    w.once('exit', (code) => reject(new Error(`worker exited ${code} without a report`)));
  }).finally(() => {
    closeSync(fd);
    closeSync(other);
  }) as Promise<Record<string, string | boolean>>;
}

if (!isMainThread) {
  workerSide();
} else if (process.env.TSVMM_SECCOMP_CHILD) {
  // The child process of the kill test: it must die of SIGSYS inside runWorker.
  await runWorker(process.env.TSVMM_SECCOMP_CHILD);
  console.log('SURVIVED');
} else {
  test('in the filtered thread: allowed calls work, others get EPERM, ioctl only KVM_RUN on its own fd', async () => {
    const r = await runWorker();
    assert.equal(r, {
      futex: 'timed-out',
      getuid: 'errno 1',
      stat: 'EPERM',
      open: 'EPERM',
      kvmRunOwnFd: 'errno 25', // ENOTTY from the kernel: the filter let it through
      otherIoctlOwnFd: 'errno 1',
      kvmRunOtherFd: 'errno 1',
      garbage: 'ok',
    });
    // The main thread is not filtered.
    assert.ok(statSync('/').isDirectory());
    closeSync(openSync('/proc/self/status', 'r'));
  });

  test('a call only a taken-over thread makes (starting a program) kills the process with SIGSYS', () => {
    const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url)], { env: { ...process.env, TSVMM_SECCOMP_CHILD: 'exec' }, encoding: 'utf8' });
    assert.is(r.signal, 'SIGSYS', `child ended with ${r.status}/${r.signal}: ${r.stdout}${r.stderr}`);
    assert.not.match(r.stdout, /SURVIVED/);
  });

  test.run();
}
