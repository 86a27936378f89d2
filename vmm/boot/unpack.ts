// The boot fast path: a bzImage's compressed vmlinux unpacked on the host once, so the guest
// skips its own decompression. The payload's format comes from its magic at the setup header's
// payload_offset; maintained decoders do the work (node:zlib for gzip, the xz, zstd, lz4 and
// bzip2 tools for the rest), never one of ours. The result is checked (an ELF, the length the
// kernel's build appended) and cached by the bzImage's SHA-256 as
// <tsvmm cache>/vmlinux/<sha256>.elf, written through a temp file and a rename; where the cache
// cannot be written, under the temp directory (vmm/cache.ts). Owns that directory.

import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, fstatSync, openSync, readSync, realpathSync, renameSync, rmSync, statSync, writeFileSync, type BigIntStats } from 'node:fs';
import { basename, join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { TsvmmError } from '../../lib/errors';
import { ELFMAG } from '../../lib/elf';
import { cacheDir, fallbackCacheDir, record, recorded, writableCacheDir } from '../cache';
import { parseBzImage } from './bzimage';
import type { PageRuns } from './loader';

export type PayloadFormat = 'gzip' | 'xz' | 'lzma' | 'bzip2' | 'zstd' | 'lz4' | 'lzo' | 'unknown';

/** A payload that does not decode to a vmlinux: which tool said what. */
export class KernelUnpackError extends TsvmmError {
  constructor(readonly path: string, readonly tool: string, reason: string, readonly stderr = '') {
    super(`${path}: cannot unpack the kernel payload with ${tool}: ${reason}${stderr ? ` (${tool}: ${stderr.trim().split('\n').pop()})` : ''}`);
  }
}

/** Magics as the kernel's scripts/extract-vmlinux knows them. */
const MAGICS: [PayloadFormat, number[]][] = [
  ['gzip', [0x1f, 0x8b, 0x08]],
  ['xz', [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]],
  ['bzip2', [0x42, 0x5a, 0x68]],
  ['lzma', [0x5d, 0x00, 0x00]],
  ['lzo', [0x89, 0x4c, 0x5a, 0x4f]],
  ['lz4', [0x02, 0x21, 0x4c, 0x18]],
  ['zstd', [0x28, 0xb5, 0x2f, 0xfd]],
];

/** Decoders reading stdin, writing stdout (gzip is node:zlib's). */
const TOOLS: Partial<Record<PayloadFormat, { cmd: string; args: string[]; pkg: string }>> = {
  xz: { cmd: 'xz', args: ['-dc', '--format=xz', '--single-stream'], pkg: 'xz-utils' },
  lzma: { cmd: 'xz', args: ['-dc', '--format=lzma'], pkg: 'xz-utils' },
  bzip2: { cmd: 'bzip2', args: ['-dc'], pkg: 'bzip2' },
  zstd: { cmd: 'zstd', args: ['-dcq'], pkg: 'zstd' },
  lz4: { cmd: 'lz4', args: ['-dc'], pkg: 'lz4' },
};

export interface Payload {
  format: PayloadFormat;
  /** The compressed stream alone (without the 4-byte size the kernel's build appends). */
  data: Uint8Array;
  /** The vmlinux's length as the build recorded it (the payload's last 4 bytes, little-endian). */
  expectedSize: number;
}

/** The compressed vmlinux of a bzImage (validated as the loader validates it). */
export function kernelPayload(path: string, image: Uint8Array): Payload {
  const bz = parseBzImage(path, image);
  const { payloadOffset: off, payloadLength: len } = bz;
  if (len < 8 || off + len > bz.kernel.length) {
    throw new KernelUnpackError(path, 'the setup header', `payload ${len} bytes at ${off} lies outside the ${bz.kernel.length}-byte kernel`);
  }
  const payload = bz.kernel.subarray(off, off + len);
  const format = MAGICS.find(([, m]) => m.every((b, i) => payload[i] === b))?.[0] ?? 'unknown';
  const expectedSize = new DataView(payload.buffer, payload.byteOffset + len - 4, 4).getUint32(0, true);
  // gzip's own trailer ends in the size (ISIZE); every other compressor gets it appended.
  return { format, data: format === 'gzip' ? payload : payload.subarray(0, len - 4), expectedSize };
}

export interface UnpackedKernel {
  /** The cached ELF vmlinux (its length and magic checked; the loader parses it). */
  path: string;
  format: PayloadFormat;
  /** Unpacked now (false: found in the cache). */
  fresh: boolean;
}

/** Where the vmlinux of an image with this SHA-256 is cached (the first that exists wins). */
function cachePaths(sha: string): string[] {
  const name = `${sha}.elf`;
  return [join(cacheDir(), 'vmlinux', name), join(fallbackCacheDir('vmlinux'), name)];
}

/**
 * The SHA-256 of a bzImage is recorded beside the cache, keyed by its real path, with its size,
 * mtime and ctime (cache.ts, recorded()): a boot of an unchanged image finds its vmlinux without
 * hashing it (~25 ms natively, far more under emulation).
 */
function indexName(path: string): string {
  return `src-${createHash('sha256').update(realpathSync(path)).digest('hex').slice(0, 16)}`;
}

function recordedSha(path: string, st: BigIntStats): string | undefined {
  const sha = recorded('vmlinux', indexName(path), [st]);
  return sha !== undefined && /^[0-9a-f]{64}$/.test(sha) ? sha : undefined;
}

/**
 * The cached vmlinux's non-zero page runs per segment (vmm/boot/loader.ts, BootImage.vmlinuxRuns),
 * recorded by the boot that first scanned it, keyed by the file's stat (`st`, taken before it
 * was read): a later boot copies them without scanning the whole vmlinux for zero pages.
 */
export function recordedRuns(vmlinux: string, st: BigIntStats): PageRuns | undefined {
  const text = recorded('vmlinux', runsName(vmlinux), [st]);
  try {
    return text === undefined ? undefined : (JSON.parse(text) as PageRuns);
  } catch {
    return undefined; // the loader checks what parses; this did not
  }
}

/** Records `runs` for recordedRuns(); `since` as for record() in cache.ts. */
export function recordRuns(vmlinux: string, st: BigIntStats, runs: PageRuns, since: number): void {
  record('vmlinux', runsName(vmlinux), [st], JSON.stringify(runs), since);
}

const runsName = (vmlinux: string) => `runs-${basename(vmlinux)}`;

/** The file is there, as long as the build said and starting like an ELF (not parsed: the loader does that). */
function isVmlinux(path: string, size: number): boolean {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return false;
  }
  try {
    const head = new Uint8Array(ELFMAG.length);
    return fstatSync(fd).size === size && readSync(fd, head, 0, head.length, 0) === head.length && ELFMAG.every((m, i) => head[i] === m);
  } finally {
    closeSync(fd);
  }
}

/**
 * The bzImage's vmlinux from the cache, unpacked into it first if needed; undefined when the
 * payload's format has no unpacker here (lzo, unknown: the caller boots the bzImage, one line
 * logged). A payload that does not decode to the vmlinux its header describes throws
 * KernelUnpackError. `before`: the image's stat taken before it was read, to find (and record)
 * its hash without hashing it.
 */
export function unpackKernel(path: string, image: Uint8Array, log: (m: string) => void, before?: BigIntStats): UnpackedKernel | undefined {
  const since = Date.now();
  const p = kernelPayload(path, image);
  if (p.format === 'lzo' || p.format === 'unknown') {
    log(`${path}: kernel payload is ${p.format === 'lzo' ? 'lzo-compressed' : 'in an unknown format'}: booting the bzImage (it decompresses itself)`);
    return undefined;
  }
  const known = before && before.size === BigInt(image.length) ? recordedSha(path, before) : undefined;
  const sha = known ?? createHash('sha256').update(image).digest('hex');
  const hit = cachePaths(sha).find((c) => isVmlinux(c, p.expectedSize));
  if (hit) {
    if (before && !known) record('vmlinux', indexName(path), [before], sha, since);
    return { path: hit, format: p.format, fresh: false };
  }
  const dir = writableCacheDir('vmlinux');
  const dest = join(dir, `${sha}.elf`);
  log(`unpacking the ${p.format} kernel of ${path} once (${(p.data.length / 2 ** 20).toFixed(1)} MiB) into ${dest}`);
  const tmp = join(dir, `.${sha}.${process.pid}.tmp`);
  try {
    decode(path, p, tmp);
    renameSync(tmp, dest);
    if (before) record('vmlinux', indexName(path), [before], sha, since);
    return { path: dest, format: p.format, fresh: true };
  } finally {
    rmSync(tmp, { force: true });
  }
}

/** Decodes the payload into the file `tmp` and checks the result. */
function decode(path: string, p: Payload, tmp: string): void {
  const tool = TOOLS[p.format];
  let name = 'node:zlib gunzip';
  if (!tool) {
    let out: Buffer;
    try {
      out = gunzipSync(p.data);
    } catch (e) {
      throw new KernelUnpackError(path, name, (e as Error).message);
    }
    writeFileSync(tmp, out);
  } else {
    name = tool.cmd;
    const fd = openSync(tmp, 'w', 0o644);
    let r;
    try {
      r = spawnSync(tool.cmd, tool.args, { input: p.data, stdio: ['pipe', fd, 'pipe'], maxBuffer: 1 << 20 });
    } finally {
      closeSync(fd);
    }
    if (r.error) {
      const missing = (r.error as NodeJS.ErrnoException).code === 'ENOENT';
      throw new KernelUnpackError(path, name, missing ? `${tool.cmd} is not installed (apt-get install ${tool.pkg}), or boot with --no-unpack` : r.error.message);
    }
    if (r.status !== 0) throw new KernelUnpackError(path, name, `exit status ${r.status ?? r.signal} (corrupt or truncated payload?)`, r.stderr.toString());
  }
  const size = statSync(tmp).size;
  if (size !== p.expectedSize) throw new KernelUnpackError(path, name, `decoded ${size} bytes, the image says ${p.expectedSize} (truncated?)`);
  if (!isVmlinux(tmp, size)) throw new KernelUnpackError(path, name, 'the payload did not decode to an ELF vmlinux');
}
