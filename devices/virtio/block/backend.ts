// Where a drive's bytes live: a raw image file. The main thread opens it (asynchronously, with
// the checks that give a user a one-line error) and owns the descriptor; the drive's I/O thread
// (worker.ts) reads and writes it with plain synchronous preadv/pwritev/fdatasync — blocking
// that thread, never the main one — straight between the file and guest memory. This module
// owns the open file and the loop over short transfers; it must not know requests, rings or
// guest addresses.

import { open, type FileHandle } from 'node:fs/promises';
import { constants, fdatasyncSync, readvSync, writevSync } from 'node:fs';
import { TsvmmError } from '../../../lib/errors';

/** A drive's storage as the request path uses it: synchronous, on the I/O thread. */
export interface BlockIo {
  /** Bytes in the image. */
  readonly size: number;
  /** Reads exactly the views' total length at `position`; throws on an I/O error or a short file. */
  readv(bufs: Uint8Array[], position: number): void;
  writev(bufs: Uint8Array[], position: number): void;
  /** Makes every completed write durable (fdatasync). */
  flush(): void;
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
export class FileIo implements BlockIo {
  constructor(
    private readonly fd: number,
    readonly size: number,
    private readonly path: string,
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
