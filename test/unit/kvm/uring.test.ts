// io_uring through raw system calls (kvm/uring.ts) and the drive backend on it
// (devices/virtio/block/backend.ts UringIo): the layouts against <linux/io_uring.h>; a ring's
// writes, reads and a datasync fsync against a real file, many in flight, the registered eventfd
// signalled; UringIo's transfers straight between the file and mmap'd memory, several in flight,
// a short read's rest done the plain way, a failure reported for its tag only.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AbiExpectations } from '../abi';
import {
  IORING_ENTER_GETEVENTS, IORING_FEAT_SINGLE_MMAP, IORING_FSYNC_DATASYNC, IORING_OFF_CQ_RING, IORING_OFF_SQES, IORING_OFF_SQ_RING, IORING_OP_FSYNC,
  IORING_OP_READV, IORING_OP_WRITEV, IORING_REGISTER_EVENTFD, IOSQE_IO_DRAIN, IOVEC_SIZE, IoCqringOffsets, IoSqringOffsets, IoUring, IoUringCqe,
  IoUringParams, IoUringSqe, IoUringRestriction, IOSQE_FIXED_FILE, IORING_SETUP_R_DISABLED, IORING_REGISTER_FILES, IORING_REGISTER_RESTRICTIONS,
  IORING_REGISTER_ENABLE_RINGS, IORING_RESTRICTION_SQE_OP, IORING_RESTRICTION_SQE_FLAGS_ALLOWED, IORING_RESTRICTION_SQE_FLAGS_REQUIRED,
} from '../../../kvm/uring';
import { SysError } from '../../../kvm/errors';
import { ioUringRegister } from '../../../kvm/libc';
import { MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE, close as closeFd, eventfd, eventfdDrain, mmap, munmap, view } from '../../../kvm/libc';
import { FileIo, UringIo } from '../../../devices/virtio/block/backend';

test('io_uring layouts and constants match <linux/io_uring.h>', () => {
  const abi = new AbiExpectations();
  for (const s of [IoSqringOffsets, IoCqringOffsets, IoUringParams, IoUringSqe, IoUringCqe, IoUringRestriction]) abi.struct(s);
  const consts: [string, number][] = [
    ['IORING_OP_READV', IORING_OP_READV], ['IORING_OP_WRITEV', IORING_OP_WRITEV], ['IORING_OP_FSYNC', IORING_OP_FSYNC],
    ['IORING_FSYNC_DATASYNC', IORING_FSYNC_DATASYNC], ['IOSQE_IO_DRAIN', IOSQE_IO_DRAIN], ['IORING_ENTER_GETEVENTS', IORING_ENTER_GETEVENTS],
    ['IORING_FEAT_SINGLE_MMAP', IORING_FEAT_SINGLE_MMAP], ['IORING_REGISTER_EVENTFD', IORING_REGISTER_EVENTFD], ['IORING_OFF_SQ_RING', IORING_OFF_SQ_RING],
    ['IORING_OFF_CQ_RING', IORING_OFF_CQ_RING], ['IORING_OFF_SQES', IORING_OFF_SQES], ['sizeof(struct iovec)', IOVEC_SIZE],
    ['IOSQE_FIXED_FILE', IOSQE_FIXED_FILE], ['IORING_SETUP_R_DISABLED', IORING_SETUP_R_DISABLED], ['IORING_REGISTER_FILES', IORING_REGISTER_FILES],
    ['IORING_REGISTER_RESTRICTIONS', IORING_REGISTER_RESTRICTIONS], ['IORING_REGISTER_ENABLE_RINGS', IORING_REGISTER_ENABLE_RINGS],
    ['IORING_RESTRICTION_SQE_OP', IORING_RESTRICTION_SQE_OP], ['IORING_RESTRICTION_SQE_FLAGS_ALLOWED', IORING_RESTRICTION_SQE_FLAGS_ALLOWED],
    ['IORING_RESTRICTION_SQE_FLAGS_REQUIRED', IORING_RESTRICTION_SQE_FLAGS_REQUIRED],
    ['__NR_io_uring_setup', 425], ['__NR_io_uring_enter', 426], ['__NR_io_uring_register', 427],
  ];
  for (const [c, v] of consts) abi.want(c, v);
  assert.equal(abi.mismatches(['linux/io_uring.h', 'sys/uio.h', 'sys/syscall.h']), []);
  assert.ok(abi.count > 60, `checked ${abi.count} values`);
});

/** Host memory at a known address (as guest RAM is), with a view of it. */
function hostMemory(size: number): { addr: bigint; bytes: Uint8Array; free(): void } {
  const addr = mmap(size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
  return { addr, bytes: new Uint8Array(view(addr, size)), free: () => munmap(addr, size) };
}

function tempFile(bytes: Uint8Array): { path: string; fd: number; done(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-uring-'));
  const path = join(dir, 'img');
  writeFileSync(path, bytes);
  const fd = openSync(path, 'r+');
  return { path, fd, done: () => { closeSync(fd); rmSync(dir, { recursive: true, force: true }); } };
}

test('a ring: 16 writes in flight, an fsync drained behind them, 16 reads back; the eventfd counts the completions', () => {
  const f = tempFile(new Uint8Array(16 * 4096));
  const m = hostMemory(64 * 1024);
  const efd = eventfd();
  const ring = new IoUring(32, { eventfd: efd });
  try {
    const iov = new DataView(m.bytes.buffer, 60 * 1024);
    const iovAt = (i: number) => m.addr + BigInt(60 * 1024 + i * IOVEC_SIZE);
    for (let i = 0; i < 16; i++) {
      m.bytes.fill(i + 1, i * 1024, (i + 1) * 1024);
      iov.setBigUint64(i * IOVEC_SIZE, m.addr + BigInt(i * 1024), true);
      iov.setBigUint64(i * IOVEC_SIZE + 8, 1024n, true);
      ring.prepare({ opcode: IORING_OP_WRITEV, fd: f.fd, off: i * 4096, addr: iovAt(i), len: 1, rwFlags: 0, flags: 0, userData: i });
    }
    ring.prepare({ opcode: IORING_OP_FSYNC, fd: f.fd, off: 0, addr: 0n, len: 0, rwFlags: IORING_FSYNC_DATASYNC, flags: IOSQE_IO_DRAIN, userData: 100 });
    assert.is(ring.sqSpace, ring.entries - 17);
    const order: number[] = [];
    while (order.length < 17) {
      ring.enter(order.length < 17);
      ring.reap((u, res) => {
        assert.is(res, u === 100 ? 0 : 1024, `result of ${u}`);
        order.push(u);
      });
    }
    assert.is(order.at(-1), 100, 'the drained fsync completes after every write');
    assert.is(eventfdDrain(efd), 17n, 'one eventfd count per completion');
    const file = readFileSync(f.path);
    for (let i = 0; i < 16; i++) assert.ok(file.subarray(i * 4096, i * 4096 + 1024).every((b) => b === i + 1), `block ${i}`);
    m.bytes.fill(0, 0, 16 * 1024);
    for (let i = 0; i < 16; i++) ring.prepare({ opcode: IORING_OP_READV, fd: f.fd, off: i * 4096, addr: iovAt(15 - i), len: 1, rwFlags: 0, flags: 0, userData: i });
    let n = 0;
    while (n < 16) {
      ring.enter(true);
      n += ring.reap((_, res) => assert.is(res, 1024));
    }
    for (let i = 0; i < 16; i++) assert.ok(m.bytes.subarray((15 - i) * 1024, (16 - i) * 1024).every((b) => b === i + 1), `read ${i}`);
  } finally {
    ring.close();
    closeFd(efd);
    m.free();
    f.done();
  }
});

test('a restricted ring: only the allowed opcodes, only on its registered file by index, no register call once it runs', () => {
  const f = tempFile(Uint8Array.from({ length: 4096 }, (_, i) => i & 0xff));
  const m = hostMemory(8192);
  const ring = new IoUring(8, { restrict: { files: [f.fd], ops: [IORING_OP_READV], flags: 0 } });
  try {
    const iov = new DataView(m.bytes.buffer, 4096);
    iov.setBigUint64(0, m.addr, true);
    iov.setBigUint64(8, 512n, true);
    const iovAddr = m.addr + 4096n;
    const IORING_OP_OPENAT = 18;
    const IORING_OP_NOP = 0;
    // Index 0 of the registered files, as a restricted ring needs: allowed.
    ring.prepare({ opcode: IORING_OP_READV, fd: 0, off: 512, addr: iovAddr, len: 1, rwFlags: 0, flags: IOSQE_FIXED_FILE, userData: 1 });
    // The same read by raw fd (no IOSQE_FIXED_FILE): refused.
    ring.prepare({ opcode: IORING_OP_READV, fd: f.fd, off: 0, addr: iovAddr, len: 1, rwFlags: 0, flags: 0, userData: 2 });
    // Opcodes not on the list, even with the fixed file: refused.
    ring.prepare({ opcode: IORING_OP_WRITEV, fd: 0, off: 0, addr: iovAddr, len: 1, rwFlags: 0, flags: IOSQE_FIXED_FILE, userData: 3 });
    ring.prepare({ opcode: IORING_OP_OPENAT, fd: 0, off: 0, addr: 0n, len: 0, rwFlags: 0, flags: IOSQE_FIXED_FILE, userData: 4 });
    ring.prepare({ opcode: IORING_OP_NOP, fd: 0, off: 0, addr: 0n, len: 0, rwFlags: 0, flags: IOSQE_FIXED_FILE | IOSQE_IO_DRAIN, userData: 5 });
    const res = new Map<number, number>();
    while (res.size < 5) {
      ring.enter(true);
      ring.reap((u, r) => res.set(u, r));
    }
    const EACCES = 13;
    assert.equal([...res.entries()].sort((a, b) => a[0] - b[0]), [[1, 512], [2, -EACCES], [3, -EACCES], [4, -EACCES], [5, -EACCES]]);
    assert.equal(m.bytes.subarray(0, 512), Uint8Array.from({ length: 512 }, (_, i) => (512 + i) & 0xff), 'the allowed read landed');
    assert.ok(m.bytes.subarray(512, 4096).every((b) => b === 0), 'nothing else was written');
    // No io_uring_register once the ring runs: not another eventfd, not more files.
    assert.throws(() => ioUringRegister(ring.fd, IORING_REGISTER_EVENTFD, Int32Array.of(f.fd), 1), (e: unknown) => e instanceof SysError && e.errno === EACCES);
    assert.throws(() => ioUringRegister(ring.fd, IORING_REGISTER_FILES, Int32Array.of(f.fd), 1), (e: unknown) => e instanceof SysError);
  } finally {
    ring.close();
    m.free();
    f.done();
  }
});

test('UringIo: transfers in flight together land where their buffers are; a short read\'s rest, a failure for one tag only', () => {
  const img = Uint8Array.from({ length: 8192 }, (_, i) => (i * 31 + 7) & 0xff);
  const f = tempFile(img);
  const m = hostMemory(64 * 1024);
  const efd = eventfd();
  const file = new FileIo(f.fd, img.length, f.path);
  const io = new UringIo(file, f.fd, 8, 4, efd, (b) => m.addr + BigInt(b.byteOffset));
  try {
    const at = (off: number, len: number) => m.bytes.subarray(off, off + len);
    // Two reads of two segments each, and one write, in flight at once.
    io.start(0, 'read', [at(0, 100), at(1000, 412)], 0);
    io.start(1, 'read', [at(4096, 512)], 4096);
    m.bytes.fill(0xab, 8192, 8192 + 512);
    io.start(2, 'write', [at(8192, 512)], 7680);
    io.submit();
    assert.is(io.inFlight, 3);
    const done = new Map<number, string | undefined>();
    while (done.size < 3) {
      io.wait();
      io.reap((tag, error) => done.set(tag, error));
    }
    assert.equal([...done.values()], [undefined, undefined, undefined]);
    assert.equal(at(0, 100), img.subarray(0, 100));
    assert.equal(at(1000, 412), img.subarray(100, 512));
    assert.equal(at(4096, 512), img.subarray(4096, 4608));
    assert.ok(readFileSync(f.path).subarray(7680).every((b) => b === 0xab));
    // A read crossing the end of the file: io_uring reads what is there, the rest fails as
    // FileIo says (end of file); the other read in flight is unaffected.
    io.start(3, 'read', [at(0, 1024)], 7680);
    io.start(4, 'read', [at(2048, 512)], 0);
    io.submit();
    done.clear();
    while (done.size < 2) {
      io.wait();
      io.reap((tag, error) => done.set(tag, error));
    }
    assert.match(done.get(3) ?? '', /end of file at byte 8192/);
    assert.is(done.get(4), undefined);
    assert.equal(at(2048, 512), img.subarray(0, 512));
    // A lone flush with nothing in flight: done at once.
    io.start(5, 'flush', [], 0);
    io.submit();
    io.reap((tag, error) => done.set(tag, error));
    assert.is(done.get(5), undefined);
    assert.is(io.inFlight, 0);
  } finally {
    io.close();
    closeFd(efd);
    m.free();
    f.done();
  }
});

test.run();
