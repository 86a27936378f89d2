// Where a drive's bytes live: a raw image file. The main thread opens it (asynchronously, with
// the checks that give a user a one-line error) and owns the descriptor; the drive's I/O thread
// (worker.ts) reads and writes it straight between the file and guest memory, with several
// operations in flight: this module owns the open file, the two ways of doing I/O on it and the
// loop over short transfers; it must not know requests, rings or guest addresses beyond the
// host address of a buffer.
//
// Why io_uring (UringIo), through raw system calls (kvm/uring.ts): it is the one interface that
// gives a single thread many file operations in flight on the host page cache — Linux AIO is
// only asynchronous with O_DIRECT, and a pool of I/O threads would be Node workers (megabytes
// and seconds to start each in a nested guest) handing completions back through more thread
// wake-ups, the cost that dominated this path before (docs/benchmarks.md, virtio-blk). Its
// completions signal the I/O thread's own eventfd (the queue's kick fd), so the thread still
// sleeps in one place; a read the page cache holds is done inside io_uring_enter, where the
// file system allows it. A lone operation with nothing in flight is done synchronously
// (preadv/pwritev/fdatasync): a queue-depth-1 guest (dd) then costs one system call and no
// kernel worker hand-off — which io_uring takes for files without non-blocking buffered I/O
// (tmpfs before Linux 6.6, buffered writes on most file systems). Where io_uring is missing or
// forbidden (old kernels, seccomp profiles of container runtimes: io_uring_setup fails), SyncIo
// does every operation synchronously, one at a time: correct, without overlap.

import { open, type FileHandle } from 'node:fs/promises';
import { constants, fdatasyncSync, readvSync, writevSync } from 'node:fs';
import { TsvmmError } from '../../../lib/errors';
import { errnoName } from '../../../kvm/errors';
import { MAP_ANONYMOUS, MAP_NORESERVE, MAP_PRIVATE, PROT_READ, PROT_WRITE, mmap, munmap, view } from '../../../kvm/libc';
import { IORING_FSYNC_DATASYNC, IORING_OP_FSYNC, IORING_OP_READV, IORING_OP_WRITEV, IOSQE_FIXED_FILE, IOVEC_SIZE, IoUring } from '../../../kvm/uring';

/** The image's index among the ring's registered files. */
const IMAGE_FILE = 0;

export type IoOp = 'read' | 'write' | 'flush';

/**
 * A drive's storage as the request path (serve.ts) uses it, on the I/O thread: operations start,
 * and finish then or later, in any order. The caller keeps at most `capacity` in flight and
 * orders what needs ordering (a flush starts only once earlier writes finished).
 */
export interface BlockIo {
  /** Bytes in the image. */
  readonly size: number;
  /** Most operations in flight at once. */
  readonly capacity: number;
  /**
   * Starts reading (writing) exactly the views' total length at byte `position`, or a flush
   * (fdatasync: every finished write durable; `bufs` empty). Its end comes from reap() with `tag`.
   */
  start(tag: number, op: IoOp, bufs: Uint8Array[], position: number): void;
  /** Hands what start() queued to the host; some operations may finish during the call. */
  submit(): void;
  /** Calls `done` for every operation that finished: `error` says why one failed (answered IOERR). */
  reap(done: (tag: number, error: string | undefined) => void): void;
  /** Sleeps until at least one operation finished; only while some are in flight. */
  wait(): void;
  /** Operations started and not reaped yet. */
  readonly inFlight: number;
  /** Releases what the I/O needs (nothing may be in flight). */
  close(): void;
}

/** The image cannot be opened (or is no regular file): one line naming it. */
export class DriveOpenError extends TsvmmError {}

/** Drops the first `n` bytes of a list of views (after a short transfer). */
function advance(bufs: Uint8Array[], n: number): Uint8Array[] {
  let i = 0;
  while (i < bufs.length && n >= bufs[i]!.length) n -= bufs[i++]!.length;
  const rest = bufs.slice(i);
  if (n > 0 && rest.length) rest[0] = rest[0]!.subarray(n);
  return rest;
}

const total = (bufs: readonly Uint8Array[]) => bufs.reduce((n, b) => n + b.length, 0);

/** An open image: its descriptor (for the I/O thread), size and path. */
export class DriveImage {
  private constructor(
    private readonly fh: FileHandle,
    readonly size: number,
    readonly path: string,
  ) {}

  /** The descriptor the I/O thread uses; valid until close(). */
  get fd(): number {
    return this.fh.fd;
  }

  /** Opens a raw image read-write (read-only when `readOnly`). */
  static async open(path: string, readOnly: boolean): Promise<DriveImage> {
    let fh: FileHandle;
    try {
      // libuv opens with O_CLOEXEC: the image never leaks into a child.
      fh = await open(path, readOnly ? constants.O_RDONLY : constants.O_RDWR);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw new DriveOpenError(`drive ${path}: cannot open${readOnly ? '' : ' read-write'}: ${err.code ?? err.message}`, { call: 'open', errno: typeof err.errno === 'number' ? -err.errno : undefined, cause: e });
    }
    try {
      const st = await fh.stat();
      if (!st.isFile() && !st.isBlockDevice()) throw new DriveOpenError(`drive ${path}: not a regular file or block device`);
      // A block device's stat size is 0: its size is where the end is.
      const size = st.isFile() ? st.size : await blockDeviceSize(fh);
      return new DriveImage(fh, size, path);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  /** Closes the descriptor: only once no thread uses it any more. */
  close(): Promise<void> {
    return this.fh.close();
  }
}

/** Synchronous I/O on an image's descriptor (which another thread owns and closes). */
export class FileIo {
  constructor(
    private readonly fd: number,
    readonly size: number,
    readonly path: string,
  ) {}

  readv(bufs: Uint8Array[], position: number): void {
    let want = total(bufs);
    while (want > 0) {
      const n = readvSync(this.fd, bufs, position);
      if (n === 0) throw new TsvmmError(`drive ${this.path}: end of file at byte ${position} (the image shrank?)`, { call: 'preadv' });
      want -= n;
      position += n;
      if (want > 0) bufs = advance(bufs, n);
    }
  }

  writev(bufs: Uint8Array[], position: number): void {
    let want = total(bufs);
    while (want > 0) {
      const n = writevSync(this.fd, bufs, position);
      if (n === 0) throw new TsvmmError(`drive ${this.path}: pwritev wrote nothing at byte ${position}`, { call: 'pwritev' });
      want -= n;
      position += n;
      if (want > 0) bufs = advance(bufs, n);
    }
  }

  flush(): void {
    fdatasyncSync(this.fd);
  }
}

const message = (e: unknown) => (e instanceof Error ? e.message : String(e));

/** Runs one operation synchronously; the error's message when it failed. */
function runSync(file: FileIo, op: IoOp, bufs: Uint8Array[], position: number): string | undefined {
  try {
    if (op === 'read') file.readv(bufs, position);
    else if (op === 'write') file.writev(bufs, position);
    else file.flush();
    return undefined;
  } catch (e) {
    return message(e);
  }
}

/** Every operation done at once, synchronously (where io_uring is not available). */
export class SyncIo implements BlockIo {
  readonly capacity: number;
  private readonly finished: [tag: number, error: string | undefined][] = [];

  constructor(
    private readonly file: FileIo,
    capacity: number,
  ) {
    this.capacity = capacity;
  }

  get size(): number {
    return this.file.size;
  }

  get inFlight(): number {
    return this.finished.length;
  }

  start(tag: number, op: IoOp, bufs: Uint8Array[], position: number): void {
    this.finished.push([tag, runSync(this.file, op, bufs, position)]);
  }

  submit(): void {}

  reap(done: (tag: number, error: string | undefined) => void): void {
    for (const [tag, error] of this.finished.splice(0)) done(tag, error);
  }

  wait(): void {}

  close(): void {}
}

interface Pending {
  op: IoOp;
  bufs: Uint8Array[];
  position: number;
  /** Bytes the operation must move (0 for a flush). */
  want: number;
}

/**
 * Operations through io_uring (module comment): READV/WRITEV straight between the file and the
 * buffers' host memory, FSYNC(DATASYNC) for a flush. Buffers must be views of memory at a known
 * host address (`addressOf`: guest RAM mapped by the VMM), never of V8's heap, which moves.
 */
export class UringIo implements BlockIo {
  readonly capacity: number;
  private readonly ring: IoUring;
  /** One iovec array per tag, `maxSegments` long, at a host address the kernel reads at submission. */
  private readonly iovAddr: bigint;
  private readonly iovBytes: number;
  private readonly iovs: DataView;
  private readonly pending = new Map<number, Pending>();
  /** Started, not yet handed to the kernel. */
  private readonly queued: number[] = [];
  /** Finished synchronously (a lone operation, a short transfer's rest), not yet reaped. */
  private readonly finished: [tag: number, error: string | undefined][] = [];
  private inKernel = 0;

  /**
   * `capacity` tags (0 .. capacity-1), each with up to `maxSegments` buffers. `eventfd`: signalled
   * at every completion the kernel posts (the thread's wake-up fd). Throws SysError when io_uring
   * cannot be set up here.
   */
  constructor(
    private readonly file: FileIo,
    fd: number,
    capacity: number,
    private readonly maxSegments: number,
    eventfd: number,
    private readonly addressOf: (b: Uint8Array) => bigint,
  ) {
    // Locked to vectored reads, writes and fsyncs of this one file (kvm/uring.ts): what the
    // ring can do is no more than what the I/O thread's seccomp filter allows it to call.
    this.ring = new IoUring(capacity, { eventfd, restrict: { files: [fd], ops: [IORING_OP_READV, IORING_OP_WRITEV, IORING_OP_FSYNC], flags: 0 } });
    try {
      this.capacity = Math.min(capacity, this.ring.entries);
      this.iovBytes = this.capacity * maxSegments * IOVEC_SIZE;
      this.iovAddr = mmap(this.iovBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1);
      this.iovs = new DataView(view(this.iovAddr, this.iovBytes));
    } catch (e) {
      this.ring.close();
      throw e;
    }
  }

  get size(): number {
    return this.file.size;
  }

  get inFlight(): number {
    return this.pending.size + this.finished.length;
  }

  /** The ring's own fd: the one io_uring_enter the I/O thread's seccomp filter allows. */
  get ringFd(): number {
    return this.ring.fd;
  }

  start(tag: number, op: IoOp, bufs: Uint8Array[], position: number): void {
    if (tag < 0 || tag >= this.capacity || this.pending.has(tag)) throw new RangeError(`UringIo: tag ${tag} not free`);
    if (bufs.length > this.maxSegments) throw new RangeError(`UringIo: ${bufs.length} buffers, at most ${this.maxSegments}`);
    this.pending.set(tag, { op, bufs, position, want: total(bufs) });
    this.queued.push(tag);
  }

  submit(): void {
    if (this.queued.length === 0) return;
    // Alone with nothing in flight: synchronously (module comment).
    if (this.queued.length === 1 && this.inKernel === 0) {
      const tag = this.queued.pop()!;
      const p = this.pending.get(tag)!;
      this.pending.delete(tag);
      this.finished.push([tag, runSync(this.file, p.op, p.bufs, p.position)]);
      return;
    }
    for (const tag of this.queued.splice(0)) this.prepare(tag);
    this.ring.enter();
  }

  private prepare(tag: number): void {
    const p = this.pending.get(tag)!;
    if (p.op === 'flush') {
      this.ring.prepare({ opcode: IORING_OP_FSYNC, fd: IMAGE_FILE, off: 0, addr: 0n, len: 0, rwFlags: IORING_FSYNC_DATASYNC, flags: IOSQE_FIXED_FILE, userData: tag });
    } else {
      const base = tag * this.maxSegments * IOVEC_SIZE;
      for (const [i, b] of p.bufs.entries()) {
        this.iovs.setBigUint64(base + i * IOVEC_SIZE, this.addressOf(b), true);
        this.iovs.setBigUint64(base + i * IOVEC_SIZE + 8, BigInt(b.length), true);
      }
      const opcode = p.op === 'read' ? IORING_OP_READV : IORING_OP_WRITEV;
      this.ring.prepare({ opcode, fd: IMAGE_FILE, off: p.position, addr: this.iovAddr + BigInt(base), len: p.bufs.length, rwFlags: 0, flags: IOSQE_FIXED_FILE, userData: tag });
    }
    this.inKernel++;
  }

  reap(done: (tag: number, error: string | undefined) => void): void {
    this.ring.reap((tag, res) => {
      this.inKernel--;
      const p = this.pending.get(tag);
      if (!p) throw new Error(`UringIo: completion for unknown tag ${tag}`);
      this.pending.delete(tag);
      this.finished.push([tag, this.outcome(p, res)]);
    });
    for (const [tag, error] of this.finished.splice(0)) done(tag, error);
  }

  /** A completion's result as an error message (undefined: done). A short transfer's rest is done synchronously. */
  private outcome(p: Pending, res: number): string | undefined {
    if (res < 0) return `drive ${this.file.path}: ${p.op} at byte ${p.position} failed: ${errnoName(-res)}`;
    if (p.op === 'flush' || res >= p.want) return undefined;
    // Short (a signal, the end of the file): the rest the plain way, which says why if it cannot.
    return runSync(this.file, p.op, advance(p.bufs, res), p.position + res);
  }

  wait(): void {
    if (this.finished.length > 0 || this.inKernel === 0) return;
    this.ring.enter(true);
  }

  close(): void {
    this.ring.close();
    munmap(this.iovAddr, this.iovBytes);
  }
}

async function blockDeviceSize(fh: FileHandle): Promise<number> {
  // Reading one byte at offsets doubling from 512 finds the end without an ioctl (BLKGETSIZE64).
  const probe = new Uint8Array(1);
  const has = async (at: number) => (await fh.read(probe, 0, 1, at)).bytesRead === 1;
  if (!(await has(0))) return 0;
  let lo = 0;
  let hi = 512;
  while (await has(hi)) {
    lo = hi;
    hi *= 2;
  }
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (await has(mid)) lo = mid;
    else hi = mid;
  }
  return lo + 1;
}
