// io_uring through its raw system calls and mmap'd rings, for a thread that does file I/O with
// several operations in flight (a drive's I/O thread, devices/virtio/block/). This module owns
// the kernel's layouts (io_uring_params, the ring offsets, the submission and completion
// entries: each described once, below, and checked against <linux/io_uring.h> by
// test/unit/kvm/uring.test.ts) and the ring protocol; it must not know what the operations are
// for.
//
// The protocol, single-threaded (one thread submits and reaps): an entry is written into the SQE
// array, its index into the SQ ring's array, and the SQ tail advanced; io_uring_enter hands the
// new entries to the kernel. The kernel posts completions at the CQ tail; the thread reads them
// from the head and advances it. Tail and head are stored with Atomics (release stores on x86 are
// plain stores; Atomics keeps V8 from reordering them with the entry's own writes). A registered
// eventfd is signalled on every completion, so a thread that sleeps on that eventfd (for other
// reasons too) wakes for completions as well.
//
// A ring can be locked down before its first use (`restrict`, as Firecracker's block engine
// does): io_uring operations never pass through seccomp, so a thread taken over could otherwise
// submit an OPENAT or a CONNECT through its ring whatever its filter says. A restricted ring is
// created disabled, gets its files and eventfd registered, then the opcodes, entry flags and
// (none of the) register operations it will ever accept, and only then is enabled; from there an
// entry must name a registered file by index (IOSQE_FIXED_FILE), and anything else completes
// with EACCES.

import { ioUringEnter, ioUringRegister, ioUringSetup, close as closeFd, mmap, munmap, view, MAP_POPULATE, MAP_SHARED, PROT_READ, PROT_WRITE } from './libc';
import { SysError } from './errors';
import { bytes, i32, nested, struct, u16, u32, u64, u8 } from '../lib/struct';

export const IoSqringOffsets = struct('io_sqring_offsets', 40, {
  head: u32(0), tail: u32(4), ringMask: u32(8), ringEntries: u32(12), flags: u32(16), dropped: u32(20), array: u32(24), resv1: u32(28), resv2: u64(32),
});
export const IoCqringOffsets = struct('io_cqring_offsets', 40, {
  head: u32(0), tail: u32(4), ringMask: u32(8), ringEntries: u32(12), overflow: u32(16), cqes: u32(20), flags: u32(24), resv1: u32(28), resv2: u64(32),
});
export const IoUringParams = struct('io_uring_params', 120, {
  sqEntries: u32(0), cqEntries: u32(4), flags: u32(8), sqThreadCpu: u32(12), sqThreadIdle: u32(16), features: u32(20), wqFd: u32(24),
  resv: bytes(28, 12), sqOff: nested(40, IoSqringOffsets), cqOff: nested(80, IoCqringOffsets),
});
/** The submission entry's fields tsvmm uses (the rest stay zero). */
export const IoUringSqe = struct('io_uring_sqe', 64, {
  opcode: u8(0), flags: u8(1), ioprio: u16(2), fd: i32(4), off: u64(8), addr: u64(16), len: u32(24), rwFlags: u32(28),
  userData: u64(32), bufIndex: u16(40), personality: u16(42), spliceFdIn: i32(44, 'splice_fd_in'), addr3: u64(48),
});
export const IoUringCqe = struct('io_uring_cqe', 16, { userData: u64(0), res: i32(8), flags: u32(12) });
/** One rule of IORING_REGISTER_RESTRICTIONS: `opcode` says which union member `op` is (a register op, an SQE opcode or SQE flags). */
export const IoUringRestriction = struct('io_uring_restriction', 16, { opcode: u16(0), op: u8(2, 'sqe_op'), resv: u8(3), resv2: bytes(4, 12) });

export const IORING_OP_READV = 1;
export const IORING_OP_WRITEV = 2;
export const IORING_OP_FSYNC = 3;
export const IORING_FSYNC_DATASYNC = 1;
/** The entry's fd is an index into the ring's registered files. */
export const IOSQE_FIXED_FILE = 1 << 0;
/** The entry starts only after every earlier one completed, and later ones after it. */
export const IOSQE_IO_DRAIN = 1 << 1;
export const IORING_SETUP_R_DISABLED = 1 << 6;
export const IORING_REGISTER_FILES = 2;
export const IORING_REGISTER_RESTRICTIONS = 11;
export const IORING_REGISTER_ENABLE_RINGS = 12;
export const IORING_RESTRICTION_SQE_OP = 1;
export const IORING_RESTRICTION_SQE_FLAGS_ALLOWED = 2;
export const IORING_RESTRICTION_SQE_FLAGS_REQUIRED = 3;
export const IORING_ENTER_GETEVENTS = 1;
export const IORING_FEAT_SINGLE_MMAP = 1;
export const IORING_REGISTER_EVENTFD = 4;
export const IORING_OFF_SQ_RING = 0;
export const IORING_OFF_CQ_RING = 0x8000000;
export const IORING_OFF_SQES = 0x10000000;
/** struct iovec: what a READV/WRITEV entry's addr points at. */
export const IOVEC_SIZE = 16;

const EINTR = 4;
const EBUSY = 16;
const EAGAIN = 11;

/** One operation to start. `userData` comes back with its completion (a small integer here). */
export interface UringOp {
  opcode: number;
  fd: number;
  /** File offset (READV/WRITEV), 0 for FSYNC. */
  off: number;
  /** Address of the iovec array (READV/WRITEV), 0n for FSYNC. */
  addr: bigint;
  /** iovec count (READV/WRITEV). */
  len: number;
  /** FSYNC: IORING_FSYNC_DATASYNC; READV/WRITEV: RWF_* flags. */
  rwFlags: number;
  /** IOSQE_* flags. */
  flags: number;
  userData: number;
}

/** How a ring is set up (IoUring's constructor). */
export interface RingSetup {
  /** Signalled for every completion the kernel posts. */
  eventfd?: number;
  /**
   * Lock the ring down (module comment): entries may only be these opcodes, on these files
   * (an entry's fd is then an index into `files`, with IOSQE_FIXED_FILE), with no IOSQE flags
   * but `flags`; io_uring_register is refused once the ring runs.
   */
  restrict?: { files: readonly number[]; ops: readonly number[]; flags: number };
}

const SQE = IoUringSqe.offsets;
const CQE = IoUringCqe.offsets;

export class IoUring {
  readonly fd: number;
  /** Submission slots; at most this many operations may be in flight (the CQ ring has twice as many). */
  readonly entries: number;
  private readonly maps: [addr: bigint, size: number][] = [];
  private readonly sqHead: Uint32Array;
  private readonly sqTail: Uint32Array;
  private readonly sqMask: number;
  private readonly cqHead: Uint32Array;
  private readonly cqTail: Uint32Array;
  private readonly cqMask: number;
  private readonly cqes: DataView;
  private readonly sqes: DataView;
  /** Entries written since the last enter. */
  private unsubmitted = 0;
  private closed = false;

  /**
   * A ring of `entries` slots (a power of two). Throws SysError where io_uring is missing or
   * forbidden (ENOSYS, EPERM), or cannot be restricted (EINVAL before Linux 5.10).
   */
  constructor(entries: number, setup: RingSetup = {}) {
    const p = IoUringParams.encode({ flags: setup.restrict ? IORING_SETUP_R_DISABLED : 0 });
    this.fd = ioUringSetup(entries, p);
    try {
      if (setup.eventfd !== undefined) ioUringRegister(this.fd, IORING_REGISTER_EVENTFD, Int32Array.of(setup.eventfd), 1);
      if (setup.restrict) this.lockDown(setup.restrict);
      const params = IoUringParams.read(p);
      const { sqOff, cqOff } = params;
      this.entries = params.sqEntries;
      const sqSize = sqOff.array + params.sqEntries * 4;
      const cqSize = cqOff.cqes + params.cqEntries * IoUringCqe.size;
      const map = (size: number, offset: number): ArrayBuffer => {
        const addr = mmap(size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, this.fd, offset);
        this.maps.push([addr, size]);
        return view(addr, size);
      };
      // One mapping holds both rings where the kernel allows it (5.4 on), as liburing does.
      const single = (params.features & IORING_FEAT_SINGLE_MMAP) !== 0;
      const sq = map(single ? Math.max(sqSize, cqSize) : sqSize, IORING_OFF_SQ_RING);
      const cq = single ? sq : map(cqSize, IORING_OFF_CQ_RING);
      const u32At = (b: ArrayBuffer, at: number) => new Uint32Array(b, at, 1);
      this.sqHead = u32At(sq, sqOff.head);
      this.sqTail = u32At(sq, sqOff.tail);
      this.sqMask = u32At(sq, sqOff.ringMask)[0]!;
      this.cqHead = u32At(cq, cqOff.head);
      this.cqTail = u32At(cq, cqOff.tail);
      this.cqMask = u32At(cq, cqOff.ringMask)[0]!;
      this.cqes = new DataView(cq, cqOff.cqes, params.cqEntries * IoUringCqe.size);
      this.sqes = new DataView(map(params.sqEntries * IoUringSqe.size, IORING_OFF_SQES));
      // SQ array slot i always names SQE i: entries are used in ring order.
      const array = new Uint32Array(sq, sqOff.array, params.sqEntries);
      for (let i = 0; i < params.sqEntries; i++) array[i] = i;
    } catch (e) {
      this.close();
      throw e;
    }
  }

  /** Registers the files, then the restrictions, then enables the (disabled) ring: the order the kernel requires. */
  private lockDown(r: NonNullable<RingSetup['restrict']>): void {
    ioUringRegister(this.fd, IORING_REGISTER_FILES, Int32Array.from(r.files), r.files.length);
    const rules = [
      ...r.ops.map((op) => ({ opcode: IORING_RESTRICTION_SQE_OP, op })),
      { opcode: IORING_RESTRICTION_SQE_FLAGS_ALLOWED, op: r.flags },
      { opcode: IORING_RESTRICTION_SQE_FLAGS_REQUIRED, op: IOSQE_FIXED_FILE },
    ];
    const b = new Uint8Array(rules.length * IoUringRestriction.size);
    rules.forEach((rule, i) => IoUringRestriction.write(b, rule, i * IoUringRestriction.size));
    ioUringRegister(this.fd, IORING_REGISTER_RESTRICTIONS, b, rules.length);
    ioUringRegister(this.fd, IORING_REGISTER_ENABLE_RINGS, null, 0);
  }

  /** Free submission slots (the caller keeps in-flight operations ≤ entries, so the CQ never overflows). */
  get sqSpace(): number {
    return this.entries - (this.sqTail[0]! - Atomics.load(this.sqHead, 0));
  }

  /** Writes one entry; it goes to the kernel at the next submit(). Throws when the SQ is full. */
  prepare(op: UringOp): void {
    if (this.sqSpace <= 0) throw new RangeError('io_uring: submission queue full');
    const tail = this.sqTail[0]!;
    const at = (tail & this.sqMask) * IoUringSqe.size;
    const d = this.sqes;
    for (let i = 0; i < IoUringSqe.size; i += 8) d.setBigUint64(at + i, 0n);
    d.setUint8(at + SQE.opcode, op.opcode);
    d.setUint8(at + SQE.flags, op.flags);
    d.setInt32(at + SQE.fd, op.fd, true);
    d.setBigUint64(at + SQE.off, BigInt(op.off), true);
    d.setBigUint64(at + SQE.addr, op.addr, true);
    d.setUint32(at + SQE.len, op.len, true);
    d.setUint32(at + SQE.rwFlags, op.rwFlags, true);
    d.setBigUint64(at + SQE.userData, BigInt(op.userData), true);
    Atomics.store(this.sqTail, 0, (tail + 1) >>> 0);
    this.unsubmitted++;
  }

  /** Hands every prepared entry to the kernel; with `wait`, also sleeps until at least one completion is there. */
  enter(wait = false): void {
    for (;;) {
      const r = ioUringEnter(this.fd, this.unsubmitted, wait ? 1 : 0, wait ? IORING_ENTER_GETEVENTS : 0);
      if (r >= 0) {
        this.unsubmitted -= r;
        if (this.unsubmitted === 0) return;
        continue;
      }
      // EINTR: a signal; EBUSY/EAGAIN: the kernel wants completions reaped first — which cannot
      // happen while in-flight operations stay within the CQ ring, so retrying is enough.
      if (r === -EINTR || r === -EBUSY || r === -EAGAIN) continue;
      throw new SysError('io_uring_enter', -r);
    }
  }

  /** Calls `done` for every completion posted so far; returns how many. */
  reap(done: (userData: number, res: number) => void): number {
    let head = this.cqHead[0]!;
    const tail = Atomics.load(this.cqTail, 0);
    let n = 0;
    while (head !== tail) {
      const at = (head & this.cqMask) * IoUringCqe.size;
      const userData = Number(this.cqes.getBigUint64(at + CQE.userData, true));
      const res = this.cqes.getInt32(at + CQE.res, true);
      head = (head + 1) >>> 0;
      // Released before `done` runs: the slot is the kernel's again once the entry is read.
      Atomics.store(this.cqHead, 0, head);
      done(userData, res);
      n++;
    }
    return n;
  }

  /** Unmaps the rings and closes the ring's fd (the kernel finishes or cancels what is in flight). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const [addr, size] of this.maps.splice(0)) munmap(addr, size);
    closeFd(this.fd);
  }
}
