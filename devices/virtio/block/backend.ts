// Where a drive's bytes live: a raw image file read and written through libuv's thread pool
// (fs.promises FileHandle preadv/pwritev straight into and out of guest memory), so the Node
// main thread never blocks on the disk. This module owns the open file and the loop over short
// transfers; it must not know requests, rings or guest addresses.

import { open, type FileHandle } from 'node:fs/promises';
import { constants } from 'node:fs';
import { TsvmmError } from '../../../lib/errors';

/** A drive's storage as the device uses it. Every call may run concurrently with others. */
export interface BlockBackend {
  /** Bytes in the image. */
  readonly size: number;
  /** Reads exactly the views' total length at `position`; rejects on an I/O error or a short file. */
  readv(bufs: Uint8Array[], position: number): Promise<void>;
  writev(bufs: Uint8Array[], position: number): Promise<void>;
  /** Makes every completed write durable (fdatasync). */
  flush(): Promise<void>;
  close(): Promise<void>;
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

export class FileBackend implements BlockBackend {
  private constructor(
    private readonly fh: FileHandle,
    readonly size: number,
    readonly path: string,
  ) {}

  /** Opens a raw image read-write (read-only when `readOnly`). */
  static async open(path: string, readOnly: boolean): Promise<FileBackend> {
    let fh: FileHandle;
    try {
      // libuv opens with O_CLOEXEC: the image never leaks into a child.
      fh = await open(path, (readOnly ? constants.O_RDONLY : constants.O_RDWR));
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw new DriveOpenError(`drive ${path}: cannot open${readOnly ? '' : ' read-write'}: ${err.code ?? err.message}`, { call: 'open', errno: typeof err.errno === 'number' ? -err.errno : undefined, cause: e });
    }
    try {
      const st = await fh.stat();
      if (!st.isFile() && !st.isBlockDevice()) throw new DriveOpenError(`drive ${path}: not a regular file or block device`);
      // A block device's stat size is 0: its size is where the end is.
      const size = st.isFile() ? st.size : await blockDeviceSize(fh);
      return new FileBackend(fh, size, path);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  async readv(bufs: Uint8Array[], position: number): Promise<void> {
    let want = total(bufs);
    while (want > 0) {
      const { bytesRead } = await this.fh.readv(bufs, position);
      if (bytesRead === 0) throw new TsvmmError(`drive ${this.path}: end of file at byte ${position} (the image shrank?)`, { call: 'preadv' });
      want -= bytesRead;
      position += bytesRead;
      if (want > 0) bufs = advance(bufs, bytesRead);
    }
  }

  async writev(bufs: Uint8Array[], position: number): Promise<void> {
    let want = total(bufs);
    while (want > 0) {
      const { bytesWritten } = await this.fh.writev(bufs, position);
      if (bytesWritten === 0) throw new TsvmmError(`drive ${this.path}: pwritev wrote nothing at byte ${position}`, { call: 'pwritev' });
      want -= bytesWritten;
      position += bytesWritten;
      if (want > 0) bufs = advance(bufs, bytesWritten);
    }
  }

  flush(): Promise<void> {
    return this.fh.datasync();
  }

  close(): Promise<void> {
    return this.fh.close();
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
