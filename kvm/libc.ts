// The libc calls tsvmm needs, bound once through koffi. This module owns the FFI prototypes
// and errno capture; everything above it sees plain numbers, typed arrays and SysError.
// It must not know about KVM structures (kvm/layout.ts) or devices.
//
// Pointers are BigInt in koffi 3. ioctl is declared twice, non-variadic, once with a pointer
// argument and once with an integer: on x86-64 that is how glibc reads it anyway, and a
// non-variadic prototype avoids koffi's per-call variadic type parsing on hot paths.

import type koffiModule from 'koffi';
import { createRequire } from 'node:module';
import { constants } from 'node:os';
import { bytes, i32, struct, u16, u32, u64 } from '../lib/struct';
import { SysError } from './errors';

// Loaded here, not by an import, so its cost can be told apart (vmm/startup.ts).
const koffiStart = performance.now();
const koffi = createRequire(import.meta.url)('koffi') as typeof koffiModule;
const lib = koffi.load('libc.so.6');
const koffiMs = performance.now() - koffiStart;
/** How long loading koffi and binding libc took, in ms. */
export const koffiLoadMs = (): number => koffiMs;

/** Typed arrays and ArrayBuffers are passed by address (koffi does not copy them). */
export type Pointer = ArrayBufferView | ArrayBuffer | bigint | null;

const c = {
  open: lib.func('open', 'int', ['str', 'int', 'int']),
  close: lib.func('close', 'int', ['int']),
  ioctlPtr: lib.func('ioctl', 'int', ['int', 'unsigned long', 'void *']),
  ioctlInt: lib.func('ioctl', 'int', ['int', 'unsigned long', 'unsigned long']),
  mmap: lib.func('mmap', 'void *', ['void *', 'size_t', 'int', 'int', 'int', 'int64_t']),
  munmap: lib.func('munmap', 'int', ['void *', 'size_t']),
  madvise: lib.func('madvise', 'int', ['void *', 'size_t', 'int']),
  eventfd: lib.func('eventfd', 'int', ['unsigned int', 'int']),
  read: lib.func('read', 'intptr_t', ['int', 'void *', 'size_t']),
  pread: lib.func('pread', 'intptr_t', ['int', 'void *', 'size_t', 'int64_t']),
  write: lib.func('write', 'intptr_t', ['int', 'void *', 'size_t']),
  prctl: lib.func('prctl', 'int', ['int', 'str', 'unsigned long', 'unsigned long', 'unsigned long']),
  prctlInt: lib.func('prctl', 'int', ['int', 'unsigned long', 'unsigned long', 'unsigned long', 'unsigned long']),
  syscall3Ptr: lib.func('syscall', 'long', ['long', 'long', 'long', 'void *']),
  syscall0: lib.func('syscall', 'long', ['long']),
  syscall3: lib.func('syscall', 'long', ['long', 'long', 'long', 'long']),
  // sched_setattr(pid, attr, flags) / sched_getattr(pid, attr, size, flags): non-variadic, as for ioctl.
  syscallAttr: lib.func('syscall', 'long', ['long', 'int', 'void *', 'unsigned int', 'unsigned int']),
  sysconf: lib.func('sysconf', 'long', ['int']),
  schedSetaffinity: lib.func('sched_setaffinity', 'int', ['int', 'size_t', 'void *']),
  schedGetaffinity: lib.func('sched_getaffinity', 'int', ['int', 'size_t', 'void *']),
  getsockopt: lib.func('getsockopt', 'int', ['int', 'int', 'int', 'void *', 'void *']),
  memfdCreate: lib.func('memfd_create', 'int', ['str', 'unsigned int']),
  ftruncate: lib.func('ftruncate', 'int', ['int', 'int64_t']),
  socket: lib.func('socket', 'int', ['int', 'int', 'int']),
  socketpair: lib.func('socketpair', 'int', ['int', 'int', 'int', 'void *']),
  connect: lib.func('connect', 'int', ['int', 'void *', 'unsigned int']),
  sendmsg: lib.func('sendmsg', 'intptr_t', ['int', 'void *', 'int']),
  recvmsg: lib.func('recvmsg', 'intptr_t', ['int', 'void *', 'int']),
  fcntl: lib.func('fcntl', 'int', ['int', 'int', 'int']),
  poll: lib.func('poll', 'int', ['void *', 'unsigned long', 'int']),
  futex: lib.func('syscall', 'long', ['long', 'void *', 'int', 'int', 'void *']),
  // io_uring_setup(entries, params) / io_uring_enter(fd, to_submit, min_complete, flags, sig, sigsz) /
  // io_uring_register(fd, opcode, arg, nr_args): glibc has no wrappers.
  uringSetup: lib.func('syscall', 'long', ['long', 'unsigned int', 'void *']),
  uringEnter: lib.func('syscall', 'long', ['long', 'unsigned int', 'unsigned int', 'unsigned int', 'unsigned int', 'void *', 'size_t']),
  uringRegister: lib.func('syscall', 'long', ['long', 'unsigned int', 'unsigned int', 'void *', 'unsigned int']),
  epollCreate1: lib.func('epoll_create1', 'int', ['int']),
  epollCtl: lib.func('epoll_ctl', 'int', ['int', 'int', 'int', 'void *']),
  epollWait: lib.func('epoll_wait', 'int', ['int', 'void *', 'int', 'int']),
  timerfdCreate: lib.func('timerfd_create', 'int', ['int', 'int']),
  timerfdSettime: lib.func('timerfd_settime', 'int', ['int', 'int', 'void *', 'void *']),
};

export const O_RDWR = 0o2;
export const O_CLOEXEC = 0o2000000;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MAP_POPULATE = 0x8000;
export const MADV_MERGEABLE = 12;
export const MADV_DONTFORK = 10;
export const MADV_HUGEPAGE = 14;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;
const MAP_FAILED = 0xffffffffffffffffn;
const PR_SET_NAME = 15;
const PR_SET_NO_NEW_PRIVS = 38;
const PR_GET_SECCOMP = 21;
const SYS_SECCOMP = 317;
const SECCOMP_SET_MODE_FILTER = 1;
const SYS_GETTID = 186;
const SYS_TGKILL = 234;
const SYS_SCHED_SETATTR = 314;
const SYS_SCHED_GETATTR = 315;
const SC_NPROCESSORS_ONLN = 84;
const { EINTR, EAGAIN, ETIMEDOUT } = constants.errno;

function fail(call: string, detail?: string): never {
  // koffi.errno() is live: read it before anything else can make a call.
  throw new SysError(call, koffi.errno(), detail);
}

export function open(path: string, flags: number): number {
  const fd = c.open(path, flags | O_CLOEXEC, 0) as number;
  if (fd < 0) fail('open', path);
  return fd;
}

export function close(fd: number): void {
  if ((c.close(fd) as number) < 0) fail('close');
}

// A signal (Node's profiler sends SIGPROF, for one) can interrupt an ioctl before it did
// anything, e.g. KVM_CREATE_VM: EINTR then means "call again", as kvm-ioctls does.
function retryingEintr(call: () => number, name: string): number {
  for (;;) {
    const r = call();
    if (r >= 0) return r;
    if (koffi.errno() !== EINTR) fail(name);
  }
}

/** ioctl with a pointer (or no) argument; returns the non-negative result. */
export function ioctl(fd: number, request: number, arg: Pointer, name: string): number {
  return retryingEintr(() => c.ioctlPtr(fd, request, arg) as number, name);
}

/** ioctl with an integer argument. */
export function ioctlInt(fd: number, request: number, arg: number, name: string): number {
  return retryingEintr(() => c.ioctlInt(fd, request, arg) as number, name);
}

/** Like ioctl, but returns -errno instead of throwing: for KVM_RUN, where EINTR/EAGAIN are normal. */
export function ioctlRaw(fd: number, request: number, arg: Pointer): number {
  const r = c.ioctlPtr(fd, request, arg) as number;
  return r < 0 ? -koffi.errno() : r;
}

/** mmap; returns the address. fd -1 = anonymous. */
export function mmap(length: number, prot: number, flags: number, fd: number, offset = 0): bigint {
  const p = c.mmap(null, length, prot, flags, fd, offset) as bigint;
  if (p === MAP_FAILED || p === 0n) fail('mmap', `${length} bytes`);
  return p;
}

export function munmap(addr: bigint, length: number): void {
  if ((c.munmap(addr, length) as number) < 0) fail('munmap');
}

export function madvise(addr: bigint, length: number, advice: number): void {
  if ((c.madvise(addr, length, advice) as number) < 0) fail('madvise');
}

/** A view of host memory at addr. Callers keep length ≤ 4 GiB (a larger koffi view aborts). */
export function view(addr: bigint, length: number): ArrayBuffer {
  if (length > 0x1_0000_0000) throw new RangeError(`view of ${length} bytes exceeds 4 GiB`);
  return koffi.view(addr, length);
}

export function eventfd(flags = EFD_CLOEXEC | EFD_NONBLOCK): number {
  const fd = c.eventfd(0, flags) as number;
  if (fd < 0) fail('eventfd');
  return fd;
}

/** Reads up to buf.byteLength bytes at `offset` of `fd` into `buf`; returns how many it read. */
export function pread(fd: number, buf: Uint8Array, offset: number): number {
  for (;;) {
    const n = c.pread(fd, buf, buf.byteLength, offset) as number;
    if (n >= 0) return n;
    if (koffi.errno() !== EINTR) fail('pread');
  }
}

const counter = new BigUint64Array(1);
/** Adds 1 to an eventfd (the write that an irqfd turns into an interrupt). */
export function eventfdSignal(fd: number): void {
  counter[0] = 1n;
  if ((c.write(fd, counter, 8) as number) !== 8) fail('write(eventfd)');
}

/** Reads and clears an eventfd counter; 0n when it was not signalled (non-blocking fd). */
export function eventfdDrain(fd: number): bigint {
  const r = c.read(fd, counter, 8) as number;
  if (r === 8) return counter[0]!;
  if (koffi.errno() === EAGAIN) return 0n;
  fail('read(eventfd)');
}

const POLLIN = 1;
const PollFd = struct('pollfd', 8, { fd: i32(0), events: u16(4), revents: u16(6) });

const pollFd = new Uint8Array(PollFd.size);
/**
 * Waits until an eventfd is signalled, at most `timeoutMs`, then reads and clears its counter
 * (0n: the time ran out): for a thread of its own that sleeps on the fd (a drive's I/O thread).
 * Never a read() without a limit: a worker blocked in a system call cannot be terminated, and
 * Node joins every worker before the process exits, so one thread that nobody signals any more
 * would keep the VMM from ever exiting.
 */
export function eventfdWait(fd: number, timeoutMs: number): bigint {
  PollFd.write(pollFd, { fd, events: POLLIN, revents: 0 });
  for (;;) {
    const n = c.poll(pollFd, 1, timeoutMs) as number;
    if (n === 0) return 0n;
    if (n < 0) {
      if (koffi.errno() === EINTR) continue;
      fail('poll(eventfd)');
    }
    const r = c.read(fd, counter, 8) as number;
    if (r === 8) return counter[0]!;
    if (koffi.errno() !== EINTR) fail('read(eventfd)');
  }
}

const EPOLL_CLOEXEC = 0o2000000;
const EPOLL_CTL_ADD = 1;
const EPOLLIN = 1;
const EPOLLET = 1 << 31;
/** struct epoll_event, packed on x86-64: u32 events, u64 data (here a caller's token in its low half). */
const EPOLL_EVENT_BYTES = 12;
const EPOLL_MAX_EVENTS = 4;
const epollEvents = new DataView(new ArrayBuffer(EPOLL_EVENT_BYTES * EPOLL_MAX_EVENTS));

export function epollCreate(): number {
  const fd = c.epollCreate1(EPOLL_CLOEXEC) as number;
  if (fd < 0) fail('epoll_create1');
  return fd;
}

/**
 * Watches `fd` edge-triggered: epollWait reports it once per event on the fd (an eventfd's
 * write, a timerfd's expiry), whether or not anyone reads the fd meanwhile, so the hot path
 * needs no read to re-arm it. `token` (a power of two below 2^31) is what epollWait reports.
 */
export function epollAdd(ep: number, fd: number, token: number): void {
  const ev = new DataView(new ArrayBuffer(EPOLL_EVENT_BYTES));
  ev.setUint32(0, (EPOLLIN | EPOLLET) >>> 0, true);
  ev.setUint32(4, token, true);
  if ((c.epollCtl(ep, EPOLL_CTL_ADD, fd, ev.buffer) as number) < 0) fail('epoll_ctl(EPOLL_CTL_ADD)', `fd ${fd}`);
}

/**
 * Sleeps in epoll_wait with no timeout (so no timer of its own to program) until a watched fd
 * has an event; returns the OR of their tokens, 0 when a signal interrupted the wait.
 */
export function epollWait(ep: number): number {
  const n = c.epollWait(ep, epollEvents.buffer, EPOLL_MAX_EVENTS, -1) as number;
  if (n < 0) {
    if (koffi.errno() === EINTR) return 0;
    fail('epoll_wait');
  }
  let tokens = 0;
  for (let i = 0; i < n; i++) tokens |= epollEvents.getUint32(i * EPOLL_EVENT_BYTES + 4, true);
  return tokens;
}

const CLOCK_MONOTONIC = 1;
const TFD_CLOEXEC = 0o2000000;
const TFD_NONBLOCK = 0o4000;
const itimerspec = new BigInt64Array(4); // it_interval {sec, nsec}, it_value {sec, nsec}

export function timerfdCreate(): number {
  const fd = c.timerfdCreate(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK) as number;
  if (fd < 0) fail('timerfd_create');
  return fd;
}

/**
 * Reads (and clears) a timerfd's count of expiries, 0 if none (non-blocking fd). A periodic
 * timerfd is re-armed by this read: unread, it expires once and then stays quiet.
 */
export function timerfdExpirations(fd: number): number {
  const r = c.read(fd, counter, 8) as number;
  if (r === 8) return Number(counter[0]!);
  if (koffi.errno() === EAGAIN) return 0;
  fail('read(timerfd)');
}

/** Arms a timerfd to expire every `periodMs` from now on (0 disarms it, and clears expiries not read). */
export function timerfdPeriodic(fd: number, periodMs: number): void {
  const ns = BigInt(Math.round(periodMs * 1e6));
  itimerspec[0] = itimerspec[2] = ns / 1_000_000_000n;
  itimerspec[1] = itimerspec[3] = ns % 1_000_000_000n;
  if ((c.timerfdSettime(fd, 0, itimerspec, null) as number) < 0) fail('timerfd_settime', `${periodMs} ms`);
}

const SYS_FUTEX = 202;
const FUTEX_WAIT_PRIVATE = 0 | 128;
const FUTEX_WAKE_PRIVATE = 1 | 128;
const futexTimeout = new BigInt64Array(2); // struct timespec
let futexTimeoutMs = NaN; // what futexTimeout holds
/**
 * Sleeps while `word[index]` holds `expected`, at most `timeoutMs`: the raw futex, for a word of
 * shared memory the threads of this process hand work through. Atomics.wait does the same at
 * about three times the cost (V8 parks each waiter on a condition variable behind a process-wide
 * list); a raw waiter is woken only by futexWake, never by Atomics.notify. 'ok' also covers a
 * spurious wake-up: callers re-check the word.
 */
export function futexWait(word: Int32Array, index: number, expected: number, timeoutMs: number): 'ok' | 'not-equal' | 'timed-out' {
  // A hot path (a vCPU's every forwarded access) with the same timeout each time: no BigInts to make then.
  if (timeoutMs !== futexTimeoutMs) {
    futexTimeout[0] = BigInt(Math.floor(timeoutMs / 1000));
    futexTimeout[1] = BigInt(Math.round((timeoutMs % 1000) * 1e6));
    futexTimeoutMs = timeoutMs;
  }
  if (Number(c.futex(SYS_FUTEX, word.subarray(index, index + 1), FUTEX_WAIT_PRIVATE, expected, futexTimeout)) === 0) return 'ok';
  const e = koffi.errno();
  if (e === EAGAIN) return 'not-equal';
  if (e === ETIMEDOUT) return 'timed-out';
  if (e === EINTR) return 'ok';
  fail('futex(FUTEX_WAIT)');
}

/** Wakes up to `count` threads sleeping in futexWait on `word[index]`. */
export function futexWake(word: Int32Array, index: number, count = 1): void {
  if (Number(c.futex(SYS_FUTEX, word.subarray(index, index + 1), FUTEX_WAKE_PRIVATE, count, null)) < 0) fail('futex(FUTEX_WAKE)');
}

/** Names the calling thread (shows in /proc/<pid>/task/<tid>/comm; 15 chars max). */
export function setThreadName(name: string): void {
  if ((c.prctl(PR_SET_NAME, name.slice(0, 15), 0, 0, 0) as number) < 0) fail('prctl(PR_SET_NAME)');
}

export function gettid(): number {
  return Number(c.syscall0(SYS_GETTID));
}

/** Sends sig to one thread of this process. */
export function tgkill(tid: number, sig: number): void {
  if (Number(c.syscall3(SYS_TGKILL, process.pid, tid, sig)) < 0) fail('tgkill', `tid ${tid}`);
}

/** Confines thread `tid` (0 = the caller) to the CPUs set in `mask` (a cpu_set_t of mask.length bytes). */
export function schedSetaffinity(tid: number, mask: Uint8Array): void {
  if ((c.schedSetaffinity(tid, mask.length, mask) as number) !== 0) fail('sched_setaffinity', `tid ${tid}`);
}

/** Fills `mask` (a cpu_set_t of mask.length bytes) with the CPUs thread `tid` (0 = the caller) may run on. */
export function schedGetaffinity(tid: number, mask: Uint8Array): void {
  if ((c.schedGetaffinity(tid, mask.length, mask) as number) !== 0) fail('sched_getaffinity', `tid ${tid}`);
}

export function onlineCpus(): number {
  return Number(c.sysconf(SC_NPROCESSORS_ONLN));
}

/** Calls `onReadable` on the main event loop whenever fd is readable (libuv poll, no thread). */
export function watchReadable(fd: number, onReadable: () => void, onError?: (status: number) => void): { close(): void } {
  // koffi calls back with (status, events), whatever its typings say. On POLLERR (e.g. a Unix
  // socket whose peer closed with data unread) libuv reports a negative status and stops
  // watching: only callers that pass onError hear of it.
  const cb = (status: number, ev: { readable: boolean }) => {
    if (status === 0 && ev.readable) onReadable();
    else if (status !== 0) onError?.(status);
  };
  const h = koffi.node.poll(fd, { readable: true }, cb as unknown as (ev: { readable: boolean }) => void);
  return { close: () => h.close() };
}

/** Linux scheduling policies (include/uapi/linux/sched.h). */
export const SCHED = { NORMAL: 0, FIFO: 1, RR: 2, BATCH: 3, IDLE: 5, DEADLINE: 6 } as const;

/**
 * struct sched_attr (include/uapi/linux/sched/types.h), version 0: the fields before the
 * utilization clamps, which every kernel since 3.14 takes. Checked against the header in
 * test/unit/kvm/abi.test.ts.
 */
export const SchedAttr = struct('sched_attr', 48, {
  size: u32(0), schedPolicy: u32(4), schedFlags: u64(8), schedNice: i32(16), schedPriority: u32(20),
});

export interface ThreadSchedAttr {
  /** SCHED.OTHER, FIFO, RR, BATCH, IDLE (DEADLINE is read but never set here). */
  policy: number;
  /** Real-time priority 1..99 for FIFO/RR, else 0. */
  priority: number;
  /** Nice value -20..19 for OTHER/BATCH, else 0. */
  nice: number;
}

/** sched_setattr(2) on kernel thread `tid` (0 = the calling thread). Throws SysError. */
export function schedSetattr(tid: number, a: ThreadSchedAttr): void {
  const b = SchedAttr.encode({ size: SchedAttr.size, schedPolicy: a.policy, schedNice: a.nice, schedPriority: a.priority });
  if (Number(c.syscallAttr(SYS_SCHED_SETATTR, tid, b, 0, 0)) < 0) fail('sched_setattr', `tid ${tid}`);
}

/** sched_getattr(2) of kernel thread `tid`. Throws SysError. */
export function schedGetattr(tid: number): ThreadSchedAttr {
  const b = new Uint8Array(SchedAttr.size);
  if (Number(c.syscallAttr(SYS_SCHED_GETATTR, tid, b, SchedAttr.size, 0)) < 0) fail('sched_getattr', `tid ${tid}`);
  const r = SchedAttr.read(b);
  return { policy: r.schedPolicy, priority: r.schedPriority, nice: r.schedNice };
}

/**
 * Puts the calling thread (and threads it creates later) under a classic-BPF seccomp filter
 * (bpf/seccomp.ts builds `filter`, an array of struct sock_filter). Sets PR_SET_NO_NEW_PRIVS
 * first, which seccomp requires of an unprivileged caller and which keeps the thread from
 * gaining privileges through exec. Only this thread: no SECCOMP_FILTER_FLAG_TSYNC.
 */
export function installSeccompFilter(filter: Uint8Array): void {
  if (filter.length === 0 || filter.length % 8 !== 0 || filter.length / 8 > 0xffff) throw new RangeError(`seccomp filter of ${filter.length} bytes`);
  if ((c.prctlInt(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as number) < 0) fail('prctl(PR_SET_NO_NEW_PRIVS)');
  // struct sock_fprog { u16 len; u8 pad[6]; struct sock_filter *filter; }: the program needs a
  // stable address, so it is copied into a mapping of its own (the kernel copies it in turn).
  const addr = mmap(filter.length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
  try {
    new Uint8Array(view(addr, filter.length)).set(filter);
    const fprog = new DataView(new ArrayBuffer(16));
    fprog.setUint16(0, filter.length / 8, true);
    fprog.setBigUint64(8, addr, true);
    if (Number(c.syscall3Ptr(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, 0, fprog.buffer)) < 0) fail('seccomp(SECCOMP_SET_MODE_FILTER)');
  } finally {
    munmap(addr, filter.length);
  }
}

/** The calling thread's seccomp mode: 0 none, 2 filter (PR_GET_SECCOMP). */
export function seccompMode(): number {
  const r = c.prctlInt(PR_GET_SECCOMP, 0, 0, 0, 0) as number;
  if (r < 0) fail('prctl(PR_GET_SECCOMP)');
  return r;
}

export const SOL_SOCKET = 1;
export const SO_PEERCRED = 17;
/** struct ucred (<sys/socket.h>, _GNU_SOURCE): what SO_PEERCRED answers. */
export const Ucred = struct('ucred', 12, { pid: i32(0), uid: u32(4), gid: u32(8) });

/** The process at the other end of a connected Unix socket, as the kernel saw it connect. */
export function peerCredentials(fd: number): { pid: number; uid: number; gid: number } {
  const b = new Uint8Array(Ucred.size);
  const len = new Uint32Array([Ucred.size]);
  if ((c.getsockopt(fd, SOL_SOCKET, SO_PEERCRED, b, len) as number) < 0) fail('getsockopt', 'SO_PEERCRED');
  return Ucred.read(b);
}

// ---- memfd: guest RAM another process (a vhost-user daemon) can map ----

const MFD_CLOEXEC = 1;

/** An anonymous memory file of `size` bytes (memfd_create + ftruncate), close-on-exec. */
export function memfdCreate(name: string, size: number): number {
  const fd = c.memfdCreate(name, MFD_CLOEXEC) as number;
  if (fd < 0) fail('memfd_create', name);
  if ((c.ftruncate(fd, size) as number) < 0) {
    const e = koffi.errno();
    c.close(fd);
    throw new SysError('ftruncate', e, `memfd ${name} to ${size} bytes`);
  }
  return fd;
}

// ---- Unix sockets with file descriptor passing (SCM_RIGHTS) ----
// Node's net module can neither send nor receive descriptors, and vhost-user hands over
// memory fds and eventfds in every setup message: these few calls are the whole need.

export const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SCM_RIGHTS = 1;
const MSG_CMSG_CLOEXEC = 0x40000000;
const MSG_NOSIGNAL = 0x4000;
const MSG_CTRUNC = 0x8;
const F_GETFD = 1;

/** struct sockaddr_un (<sys/un.h>). */
export const SockaddrUn = struct('sockaddr_un', 110, { sunFamily: u16(0), sunPath: bytes(2, 108) });
/** struct iovec (<sys/uio.h>). */
export const Iovec = struct('iovec', 16, { iovBase: u64(0), iovLen: u64(8) });
/** struct msghdr (<sys/socket.h>, x86-64). */
export const Msghdr = struct('msghdr', 56, {
  msgName: u64(0), msgNamelen: u32(8), msgIov: u64(16), msgIovlen: u64(24), msgControl: u64(32), msgControllen: u64(40), msgFlags: i32(48),
});
/** struct cmsghdr (<sys/socket.h>, x86-64); the data follows at CMSG_DATA = 16. */
export const Cmsghdr = struct('cmsghdr', 16, { cmsgLen: u64(0), cmsgLevel: i32(8), cmsgType: i32(12) });

/** The most descriptors one message carries (vhost-user's limit: 8 memory regions). */
export const MAX_FDS = 8;
const CONTROL_SPACE = Cmsghdr.size + 4 * MAX_FDS; // CMSG_SPACE(8 ints) = 16 + 32
/** The largest message one sendmsg/recvmsg moves here (vhost-user messages are far smaller). */
export const MAX_MESSAGE = 0x3000;
// One scratch page set per process: msghdr, iovec, control and data need stable addresses for
// the kernel, and Node is single-threaded on the main thread where these run.
const SCRATCH = 0x4000;
const HDR_OFF = 0;
const IOV_OFF = 64;
const CTRL_OFF = 128;
const DATA_OFF = 0x1000;
let scratchAddr: bigint | undefined;
let scratch: Uint8Array | undefined;
function scratchBuf(): [bigint, Uint8Array] {
  if (scratchAddr === undefined) {
    scratchAddr = mmap(SCRATCH, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
    scratch = new Uint8Array(view(scratchAddr, SCRATCH));
  }
  return [scratchAddr, scratch!];
}

function unixAddress(path: string): Uint8Array {
  const p = Buffer.from(path, 'utf8');
  if (p.length >= 108) throw new SysError('connect', constants.errno.ENAMETOOLONG, path);
  return SockaddrUn.encode({ sunFamily: AF_UNIX, sunPath: p });
}

/** A non-blocking, close-on-exec Unix stream socket connected to `path`. */
export function connectUnix(path: string): number {
  const fd = c.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0) as number;
  if (fd < 0) fail('socket', 'AF_UNIX');
  const addr = unixAddress(path);
  // A listening Unix socket accepts at once or refuses (no EINPROGRESS as for TCP).
  if ((c.connect(fd, addr, addr.length) as number) < 0) {
    const e = koffi.errno();
    c.close(fd);
    throw new SysError('connect', e, path);
  }
  return fd;
}

/** Two connected non-blocking Unix stream sockets (for tests and in-process peers). */
export function socketpair(): [number, number] {
  const fds = new Int32Array(2);
  if ((c.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds) as number) < 0) fail('socketpair');
  return [fds[0]!, fds[1]!];
}

/**
 * Sends `data` with `fds` attached (SCM_RIGHTS) in one sendmsg; returns the bytes sent (the
 * descriptors travel with the first byte). -EAGAIN when the socket buffer is full.
 */
export function sendWithFds(fd: number, data: Uint8Array, fds: readonly number[] = []): number {
  if (data.length > MAX_MESSAGE) throw new RangeError(`sendmsg of ${data.length} bytes (at most ${MAX_MESSAGE})`);
  if (fds.length > MAX_FDS) throw new RangeError(`sendmsg with ${fds.length} fds (at most ${MAX_FDS})`);
  const [base, buf] = scratchBuf();
  buf.set(data, DATA_OFF);
  Iovec.write(buf, { iovBase: base + BigInt(DATA_OFF), iovLen: BigInt(data.length) }, IOV_OFF);
  let controllen = 0;
  if (fds.length > 0) {
    controllen = Cmsghdr.size + 4 * fds.length; // CMSG_LEN; a multiple of 8 is not required for the last one
    Cmsghdr.write(buf, { cmsgLen: BigInt(controllen), cmsgLevel: SOL_SOCKET, cmsgType: SCM_RIGHTS }, CTRL_OFF);
    const dv = new DataView(buf.buffer, buf.byteOffset);
    fds.forEach((f, i) => dv.setInt32(CTRL_OFF + Cmsghdr.size + 4 * i, f, true));
    controllen = (controllen + 7) & ~7; // CMSG_SPACE
  }
  Msghdr.write(buf, {
    msgName: 0n, msgNamelen: 0, msgIov: base + BigInt(IOV_OFF), msgIovlen: 1n,
    msgControl: fds.length > 0 ? base + BigInt(CTRL_OFF) : 0n, msgControllen: BigInt(controllen), msgFlags: 0,
  }, HDR_OFF);
  for (;;) {
    const r = Number(c.sendmsg(fd, base + BigInt(HDR_OFF), MSG_NOSIGNAL));
    if (r >= 0) return r;
    const e = koffi.errno();
    if (e === EINTR) continue;
    if (e === EAGAIN) return -EAGAIN;
    throw new SysError('sendmsg', e);
  }
}

/** What one recvmsg returned: bytes (empty at end of stream) and the descriptors that came with them. */
export interface Received {
  data: Uint8Array;
  fds: number[];
}

/** One recvmsg of at most `max` bytes; undefined when nothing is waiting (non-blocking socket). */
export function recvWithFds(fd: number, max = MAX_MESSAGE): Received | undefined {
  const [base, buf] = scratchBuf();
  const len = Math.min(max, MAX_MESSAGE);
  Iovec.write(buf, { iovBase: base + BigInt(DATA_OFF), iovLen: BigInt(len) }, IOV_OFF);
  buf.fill(0, CTRL_OFF, CTRL_OFF + CONTROL_SPACE);
  Msghdr.write(buf, {
    msgName: 0n, msgNamelen: 0, msgIov: base + BigInt(IOV_OFF), msgIovlen: 1n,
    msgControl: base + BigInt(CTRL_OFF), msgControllen: BigInt(CONTROL_SPACE), msgFlags: 0,
  }, HDR_OFF);
  let r: number;
  for (;;) {
    r = Number(c.recvmsg(fd, base + BigInt(HDR_OFF), MSG_CMSG_CLOEXEC));
    if (r >= 0) break;
    const e = koffi.errno();
    if (e === EINTR) continue;
    if (e === EAGAIN) return undefined;
    throw new SysError('recvmsg', e);
  }
  const hdr = Msghdr.read(buf, HDR_OFF);
  const fds: number[] = [];
  const controllen = Number(hdr.msgControllen);
  if (controllen >= Cmsghdr.size) {
    const cm = Cmsghdr.read(buf, CTRL_OFF);
    if (cm.cmsgLevel === SOL_SOCKET && cm.cmsgType === SCM_RIGHTS) {
      const n = Math.min(MAX_FDS, Math.floor((Number(cm.cmsgLen) - Cmsghdr.size) / 4));
      const dv = new DataView(buf.buffer, buf.byteOffset);
      for (let i = 0; i < n; i++) fds.push(dv.getInt32(CTRL_OFF + Cmsghdr.size + 4 * i, true));
    }
  }
  if (hdr.msgFlags & MSG_CTRUNC) {
    for (const f of fds) c.close(f);
    throw new SysError('recvmsg', constants.errno.EMSGSIZE, 'more descriptors than one message may carry');
  }
  return { data: buf.slice(DATA_OFF, DATA_OFF + r), fds };
}

const F_DUPFD_CLOEXEC = 1030;
/** A second descriptor for fd's open file (close-on-exec), the lowest free number. */
export function dupCloexec(fd: number): number {
  const r = c.fcntl(fd, F_DUPFD_CLOEXEC, 0) as number;
  if (r < 0) fail('fcntl(F_DUPFD_CLOEXEC)');
  return r;
}

/** True while fd is an open descriptor of this process (fcntl F_GETFD). */
export function fdIsOpen(fd: number): boolean {
  return (c.fcntl(fd, F_GETFD, 0) as number) >= 0;
}

// ---- io_uring (kvm/uring.ts owns the rings and their layouts) ----

const SYS_IO_URING_SETUP = 425;
const SYS_IO_URING_ENTER = 426;
const SYS_IO_URING_REGISTER = 427;

/** io_uring_setup: a new ring of `entries` submission slots; `params` (struct io_uring_params) in and out. */
export function ioUringSetup(entries: number, params: Uint8Array): number {
  const fd = c.uringSetup(SYS_IO_URING_SETUP, entries, params) as number;
  if (fd < 0) fail('io_uring_setup');
  return fd;
}

/**
 * io_uring_enter: submits `toSubmit` entries and, with `flags` GETEVENTS, waits for `minComplete`
 * completions. Returns how many entries were consumed, or -errno (EINTR and EBUSY are the
 * caller's to retry).
 */
export function ioUringEnter(fd: number, toSubmit: number, minComplete: number, flags: number): number {
  const r = c.uringEnter(SYS_IO_URING_ENTER, fd, toSubmit, minComplete, flags, null, 0) as number;
  return r < 0 ? -koffi.errno() : r;
}

/** io_uring_register with a pointer argument. */
export function ioUringRegister(fd: number, opcode: number, arg: Pointer, nrArgs: number): void {
  if ((c.uringRegister(SYS_IO_URING_REGISTER, fd, opcode, arg, nrArgs) as number) < 0) fail('io_uring_register');
}
