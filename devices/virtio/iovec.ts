// Scatter-gather over guest memory: the buffers of one direction of a descriptor chain, seen
// as one run of bytes (the role Firecracker's IoVecBuffer / IoVecBufferMut play). This module
// owns walking such a list by byte offset — copying in and out, handing out views, writing it
// to a file descriptor — so that no device walks buffers itself. It must not know rings,
// descriptors or devices.
//
// Every segment is a view that GuestMemory.slice checked when it was appended: nothing here can
// reach outside guest RAM, and every loop is bounded by the segment count. Copies allocate
// nothing but the subarray a partial segment needs (a typed array has no ranged set()); a
// cursor remembers where the last access ended, so a payload appended piece by piece does not
// walk the list from its start each time.

import { writeSync, writevSync } from 'node:fs';
import type { GuestMemory } from '../memory';

const enum Walk { Read, Write, Views }
const NO_BYTES = new Uint8Array(0);
const NO_VIEWS: Uint8Array[] = [];

export class IoVecBuffer {
  private readonly segs: Uint8Array[] = [];
  private total = 0;
  /** Index of the segment the last access ended in, and the byte offset where it starts. */
  private cursorSeg = 0;
  private cursorStart = 0;

  /** Bytes in all segments. */
  get length(): number {
    return this.total;
  }

  /** Number of segments (descriptors). */
  get segmentCount(): number {
    return this.segs.length;
  }

  /** The segments in order (views into guest memory). */
  [Symbol.iterator](): IterableIterator<Uint8Array> {
    return this.segs[Symbol.iterator]();
  }

  /** Empties the list, for reuse by the next chain (a device's per-packet path allocates no list). */
  clear(): void {
    this.segs.length = 0;
    this.total = 0;
    this.cursorSeg = 0;
    this.cursorStart = 0;
  }

  /** Appends guest memory [gpa, gpa + len); false, and nothing appended, unless all of it is RAM. */
  append(mem: GuestMemory, gpa: number, len: number): boolean {
    const v = mem.slice(gpa, len);
    if (!v) return false;
    this.segs.push(v);
    this.total += len;
    return true;
  }

  /**
   * The segment holding byte `offset` (0 <= offset < length); leaves the cursor on it. Zero-length
   * segments are stepped over: the loop ends at the latest at the last non-empty segment.
   */
  private seek(offset: number): number {
    let i = 0;
    let start = 0;
    if (offset >= this.cursorStart) {
      i = this.cursorSeg;
      start = this.cursorStart;
    }
    while (start + this.segs[i]!.length <= offset) start += this.segs[i++]!.length;
    this.cursorSeg = i;
    this.cursorStart = start;
    return i;
  }

  /** Bytes available from `offset` for a request of `want` (0 for offsets outside, NaN included). */
  private span(offset: number, want: number): number {
    if (!(offset >= 0 && offset < this.total) || !(want > 0)) return 0;
    return Math.min(want, this.total - offset);
  }

  /** Copies bytes from `offset` on into `dst` until either ends; returns how many. */
  readAt(dst: Uint8Array, offset = 0): number {
    return this.walk(Walk.Read, offset, dst.length, dst, NO_VIEWS);
  }

  /** Copies `src` into the buffers from `offset` on, as much as fits; returns how many bytes. */
  writeAt(src: Uint8Array, offset = 0): number {
    return this.walk(Walk.Write, offset, src.length, src, NO_VIEWS);
  }

  /** Views of bytes [offset, offset + len) (clipped to the buffer), appended to `out` (no copy). */
  views(offset: number, len: number, out: Uint8Array[] = []): Uint8Array[] {
    this.walk(Walk.Views, offset, len, NO_BYTES, out);
    return out;
  }

  /**
   * The one walk over the segments: bytes [offset, offset + min(len, what is left)) are copied
   * out into `buf` (Read), in from it (Write), or handed out as views (Views). Leaves the cursor
   * where it ended; returns the byte count.
   */
  private walk(how: Walk, offset: number, len: number, buf: Uint8Array, out: Uint8Array[]): number {
    const n = this.span(offset, len);
    if (n === 0) return 0;
    let i = this.seek(offset);
    let pos = offset - this.cursorStart;
    let done = 0;
    for (;;) {
      const s = this.segs[i]!;
      const k = Math.min(s.length - pos, n - done);
      if (how === Walk.Write) {
        s.set(done === 0 && k === buf.length ? buf : buf.subarray(done, done + k), pos);
      } else {
        const part = pos === 0 && k === s.length ? s : s.subarray(pos, pos + k);
        if (how === Walk.Read) buf.set(part, done);
        else out.push(part);
      }
      done += k;
      if (done === n) {
        // The next access likely starts where this one ended.
        if (pos + k === s.length && i + 1 < this.segs.length) {
          this.cursorStart += s.length;
          this.cursorSeg = i + 1;
        } else {
          this.cursorSeg = i;
        }
        return n;
      }
      this.cursorStart += s.length;
      i++;
      pos = 0;
    }
  }

  /** Bytes [offset, offset + len) (clipped) copied into one new Buffer that no longer aliases guest memory. */
  copyOut(offset: number, len: number): Buffer {
    const out = Buffer.allocUnsafe(this.span(offset, len));
    this.readAt(out, offset);
    return out;
  }

  /**
   * Writes bytes [offset, offset + len) (clipped) to `fd` with one write(2) or writev(2) straight
   * from guest memory; returns what the kernel took (it may be short on a non-blocking fd).
   * Errors (EAGAIN included) are thrown as Node's fs errors.
   */
  writeTo(fd: number, offset: number, len: number): number {
    const n = this.span(offset, len);
    if (n === 0) return 0;
    const i = this.seek(offset);
    const s = this.segs[i]!;
    const pos = offset - this.cursorStart;
    if (s.length - pos >= n) return writeSync(fd, s, pos, n);
    return writevSync(fd, this.views(offset, n));
  }
}
