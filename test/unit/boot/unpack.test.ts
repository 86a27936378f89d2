// The boot fast path's unpacker (vmm/boot/unpack.ts): a bzImage around a tiny ELF, its payload
// made by the real compressors the way the kernel's build makes it (the tool's output, then the
// uncompressed length as 4 little-endian bytes, except gzip whose trailer ends in it), unpacked
// into a cache of its own; the cache's hits, misses and fallback; bad payloads; and the zero page
// the unpacked path hands the kernel against the bzImage path's.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory } from '../../../devices/memory';
import { loadKernel } from '../../../vmm/boot/loader';
import { KernelUnpackError, kernelPayload, unpackKernel } from '../../../vmm/boot/unpack';
import { firstMissing, missingCommand, needs } from '../../needs';
import { NO_KERNEL, cachedKernel, makeBzImage, makeElf } from './images';

const MiB = 0x10_0000;
const ELF = makeElf();
const KERNEL_OFFSET = 5 * 512; // makeBzImage's 4 setup sectors + the boot sector
const PAYLOAD_AT = 0x100; // inside the protected-mode kernel, as payload_offset counts

/** The compressor command lines of the kernel's scripts/Makefile.lib (smaller levels: the input is tiny). */
const COMPRESS: Record<string, string[]> = {
  gzip: ['gzip', '-n', '-9', '-c'],
  xz: ['xz', '--check=crc32', '--lzma2=dict=1MiB', '-c'],
  lzma: ['xz', '--format=lzma', '-9', '-c'],
  bzip2: ['bzip2', '-9', '-c'],
  zstd: ['zstd', '-19', '-q', '-c'],
  lz4: ['lz4', '-l', '-9', '-c'],
};

function compress(format: string, data: Uint8Array): Uint8Array {
  const [cmd, ...args] = COMPRESS[format]!;
  const r = spawnSync(cmd!, args, { input: data });
  assert.is(r.status, 0, `${cmd}: ${r.stderr}`);
  if (format === 'gzip') return r.stdout;
  const size = Buffer.alloc(4);
  size.writeUInt32LE(data.length);
  return Buffer.concat([r.stdout, size]);
}

/** A bzImage whose setup header points at `payload` (payload_offset/payload_length). */
function bzImage(payload: Uint8Array, filler = 0): Uint8Array {
  const img = makeBzImage({ kernelLength: Math.max(0x1000, PAYLOAD_AT + payload.length + 0x40) });
  const dv = new DataView(img.buffer);
  dv.setUint32(0x248, PAYLOAD_AT, true);
  dv.setUint32(0x24c, payload.length, true);
  img.fill(filler, KERNEL_OFFSET, KERNEL_OFFSET + PAYLOAD_AT);
  img.set(payload, KERNEL_OFFSET + PAYLOAD_AT);
  return img;
}

/** A fresh cache ($TSVMM_CACHE) and temp directory ($TMPDIR, where the fallback goes) per test. */
function withCache<T>(fn: (cache: string, tmp: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), 'unpack-test-'));
  const saved = { cache: process.env.TSVMM_CACHE, tmp: process.env.TMPDIR };
  process.env.TSVMM_CACHE = join(dir, 'cache');
  process.env.TMPDIR = join(dir, 'tmp');
  try {
    return fn(process.env.TSVMM_CACHE, process.env.TMPDIR);
  } finally {
    for (const [k, v] of [['TSVMM_CACHE', saved.cache], ['TMPDIR', saved.tmp]] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

function unpackError(fn: () => unknown): KernelUnpackError {
  try {
    fn();
  } catch (e) {
    assert.instance(e, KernelUnpackError);
    return e as KernelUnpackError;
  }
  assert.unreachable('no KernelUnpackError');
  throw new Error('unreachable');
}

const TOOLS = missingCommand('xz', 'gzip', 'bzip2', 'zstd', 'lz4');

for (const format of Object.keys(COMPRESS)) {
  needs(TOOLS)(`${format}: detected by its magic, unpacked to the ELF byte for byte, cached by the image's hash`, () => withCache((cache) => {
    const image = bzImage(compress(format, ELF));
    assert.is(kernelPayload('bz', image).format, format);
    const logs: string[] = [];
    const u = unpackKernel('bz', image, (m) => logs.push(m))!;
    assert.is(u.format, format);
    assert.ok(u.fresh);
    const sha = spawnSync('sha256sum', { input: image }).stdout.toString().split(' ')[0];
    assert.is(u.path, join(cache, 'vmlinux', `${sha}.elf`));
    assert.equal(new Uint8Array(readFileSync(u.path)), ELF);
    assert.is(logs.length, 1);
    assert.match(logs[0]!, `unpacking the ${format} kernel of bz once`);
    assert.equal(readdirSync(join(cache, 'vmlinux')), [`${sha}.elf`], 'no temp file left');
  }));
}

needs(TOOLS)('a second boot of the same image is a cache hit, silent; a changed image gets its own entry', () => withCache((cache) => {
  const payload = compress('xz', ELF);
  const first = unpackKernel('bz', bzImage(payload), () => {})!;
  const logs: string[] = [];
  const again = unpackKernel('bz', bzImage(payload), (m) => logs.push(m))!;
  assert.is(again.path, first.path);
  assert.not.ok(again.fresh);
  assert.equal(logs, []);
  const changed = unpackKernel('bz', bzImage(payload, 0x5a), (m) => logs.push(m))!;
  assert.ok(changed.fresh);
  assert.is.not(changed.path, first.path);
  assert.is(logs.length, 1);
  assert.is(readdirSync(join(cache, 'vmlinux')).length, 2);
}));

needs(TOOLS)('an unchanged image file is found by its recorded hash, not hashed again; a changed one (same size) is', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'unpack-index-'));
  const saved = { cache: process.env.TSVMM_CACHE, tmp: process.env.TMPDIR };
  process.env.TSVMM_CACHE = join(dir, 'cache');
  process.env.TMPDIR = dir;
  try {
    const path = join(dir, 'bzImage');
    const image = bzImage(compress('xz', ELF));
    writeFileSync(path, image);
    const stat = () => statSync(path, { bigint: true });
    // Stat'ed right after the write: a file that may change again within the clock's tick is not recorded.
    assert.ok(unpackKernel(path, image, () => {}, stat())!.fresh);
    assert.equal(readdirSync(join(dir, 'cache/vmlinux')).filter((f) => f.startsWith('src-')), [], 'racy: no record');
    await new Promise((r) => setTimeout(r, 50));
    const first = unpackKernel(path, image, () => {}, stat())!;
    assert.not.ok(first.fresh);
    assert.is(readdirSync(join(dir, 'cache/vmlinux')).filter((f) => f.startsWith('src-')).length, 1, 'recorded');
    // Bytes that hash differently but the same file (stat): the record answers, nothing is hashed.
    const other = image.slice();
    other[KERNEL_OFFSET + 1] ^= 0xff;
    const again = unpackKernel(path, other, () => {}, stat())!;
    assert.is(again.path, first.path);
    assert.not.ok(again.fresh);
    // The file changed on disk (same size): hashed again, a new entry.
    writeFileSync(path, other);
    await new Promise((r) => setTimeout(r, 50));
    const changed = unpackKernel(path, other, () => {}, stat())!;
    assert.ok(changed.fresh);
    assert.is.not(changed.path, first.path);
    // Without a stat (the caller did not take one before reading): hashed, as before.
    assert.is(unpackKernel(path, image, () => {})!.path, first.path);
  } finally {
    for (const [k, v] of [['TSVMM_CACHE', saved.cache], ['TMPDIR', saved.tmp]] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    rmSync(dir, { recursive: true, force: true });
  }
});

needs(TOOLS)('a damaged cache entry (wrong length) is unpacked again', () => withCache(() => {
  const image = bzImage(compress('zstd', ELF));
  const u = unpackKernel('bz', image, () => {})!;
  writeFileSync(u.path, ELF.subarray(0, 100));
  const again = unpackKernel('bz', image, () => {})!;
  assert.ok(again.fresh);
  assert.equal(new Uint8Array(readFileSync(again.path)), ELF);
}));

needs(TOOLS)('a cache that cannot be written: the vmlinux goes under $TMPDIR, and is found there next time', () => withCache((_, tmp) => {
  const blocker = join(tmp, '..', 'not-a-dir');
  writeFileSync(blocker, 'a file, so no directory can be made below it (root ignores permission bits)');
  process.env.TSVMM_CACHE = join(blocker, 'cache');
  const image = bzImage(compress('bzip2', ELF));
  const u = unpackKernel('bz', image, () => {})!;
  assert.ok(u.path.startsWith(join(tmp, `tsvmm-cache-${process.getuid!()}`, 'vmlinux')), u.path);
  assert.equal(new Uint8Array(readFileSync(u.path)), ELF);
  const again = unpackKernel('bz', image, () => {})!;
  assert.is(again.path, u.path);
  assert.not.ok(again.fresh);
}));

for (const format of ['xz', 'zstd', 'gzip']) {
  needs(TOOLS)(`${format}: a truncated payload is a KernelUnpackError naming the decoder and what it said`, () => withCache((cache) => {
    const whole = compress(format, ELF);
    // Cut the stream, keep the length trailer the build appends (gzip: its own trailer goes).
    const cut = format === 'gzip' ? whole.subarray(0, whole.length >> 1) : Buffer.concat([whole.subarray(0, (whole.length - 4) >> 1), whole.subarray(-4)]);
    const e = unpackError(() => unpackKernel('/k/bz', bzImage(cut), () => {}));
    assert.is(e.tool, format === 'gzip' ? 'node:zlib gunzip' : format);
    assert.match(e.message, /^\/k\/bz: cannot unpack the kernel payload with /);
    if (format !== 'gzip') assert.ok(e.stderr.length > 0, 'the tool said why');
    assert.equal(readdirSync(join(cache, 'vmlinux')), [], 'nothing cached, no temp file left');
  }));
}

needs(TOOLS)('a payload that decodes to something else, or to another length than the build recorded, is refused', () => withCache(() => {
  const notElf = new Uint8Array(ELF.length).fill(0x41);
  let e = unpackError(() => unpackKernel('bz', bzImage(compress('xz', notElf)), () => {}));
  assert.match(e.message, 'did not decode to an ELF vmlinux');
  const lying = compress('xz', ELF);
  new DataView(lying.buffer, lying.byteOffset).setUint32(lying.length - 4, ELF.length + 1, true);
  e = unpackError(() => unpackKernel('bz', bzImage(lying), () => {}));
  assert.match(e.message, `decoded ${ELF.length} bytes, the image says ${ELF.length + 1}`);
}));

test('lzo and unknown payloads: no unpacker, one log line, the caller boots the bzImage', () => withCache(() => {
  for (const [payload, what] of [[[0x89, 0x4c, 0x5a, 0x4f, 0, 0, 0, 0, 0, 0], 'lzo-compressed'], [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 'in an unknown format']] as const) {
    const logs: string[] = [];
    assert.is(unpackKernel('bz', bzImage(Uint8Array.from(payload)), (m) => logs.push(m)), undefined);
    assert.equal(logs, [`bz: kernel payload is ${what}: booting the bzImage (it decompresses itself)`]);
  }
}));

test('a payload outside the kernel is refused before any decoder runs', () => {
  const image = bzImage(new Uint8Array(64));
  new DataView(image.buffer).setUint32(0x24c, 0x10_0000, true);
  assert.match(unpackError(() => kernelPayload('bz', image)).message, /payload 1048576 bytes at 256 lies outside/);
});

needs(TOOLS)('zero page: the unpacked path hands the kernel the same boot_params as the bzImage path; only the entry differs', () => {
  const image = bzImage(compress('xz', ELF));
  const initrd = new Uint8Array(5000).fill(3);
  const boot = (vmlinux?: Uint8Array) => {
    const bytes = new Uint8Array(64 * MiB);
    const k = loadKernel(new GuestMemory([{ gpa: 0, bytes }]), [{ gpa: 0, size: bytes.length }], {
      kernelPath: 'bz', kernel: image, initrd, cmdline: 'console=ttyS0 quiet', vmlinux,
    }, 0xe0000);
    return { k, bytes };
  };
  const bz = boot();
  const un = boot(ELF);
  assert.is(bz.k.format, 'bzImage');
  assert.is(un.k.format, 'unpacked');
  assert.is(un.k.entry, 0x100_0000, "the vmlinux's 64-bit entry (e_entry)");
  assert.is(bz.k.entry, 0x100200);
  assert.equal(un.k.initrd, bz.k.initrd);
  const zp = (b: Uint8Array) => b.subarray(0x7000, 0x8000);
  assert.equal(zp(un.bytes), zp(bz.bytes), 'zero page byte-identical');
  assert.is(new DataView(zp(un.bytes).buffer, 0x7000).getUint32(0x202, true), 0x53726448, "the bzImage's own header (HdrS) is in it");
  assert.equal(un.bytes.subarray(0x100_0000, 0x100_0008), Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]), 'the ELF segment at its paddr');
});

needs(firstMissing(NO_KERNEL, TOOLS))("the cached Debian bzImage unpacks to fetch-kernel.sh's vmlinux, byte for byte", () => {
  const k = cachedKernel()!;
  withCache(() => {
    const u = unpackKernel(k.kernel, new Uint8Array(readFileSync(k.kernel)), () => {})!;
    assert.ok(readFileSync(u.path).equals(readFileSync(k.vmlinux)));
  });
});

test.run();
