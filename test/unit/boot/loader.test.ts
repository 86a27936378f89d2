// The kernel loader (vmm/boot/loader.ts) over a GuestMemory backed by a plain Uint8Array:
// where the kernel, initrd, command line and boot structures land, and what it refuses.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { GuestMemory } from '../../../devices/memory';
import { KernelImageError } from '../../../vmm/boot/errors';
import { readFileSync } from 'node:fs';
import { loadKernel, nonZeroRuns, probeKernel } from '../../../vmm/boot/loader';
import { needs } from '../../needs';
import { cachedKernel, ELF_SEG0, ELF_SEG1, makeBzImage, makeElf, NO_KERNEL } from './images';

const MiB = 0x10_0000;

function machine(size = 64 * MiB) {
  const bytes = new Uint8Array(size).fill(0xaa);
  return { bytes, mem: new GuestMemory([{ gpa: 0, bytes }]), ram: [{ gpa: 0, size }], dv: new DataView(bytes.buffer) };
}

function throwsImageError(fn: () => unknown, re: RegExp): void {
  try {
    fn();
  } catch (e) {
    assert.instance(e, KernelImageError);
    assert.match((e as Error).message, re);
    return;
  }
  assert.unreachable('no KernelImageError');
}

const cstr = (b: Uint8Array, at: number) => new TextDecoder().decode(b.subarray(at, b.indexOf(0, at)));

test('bzImage: kernel at 1 MiB, entry 0x100200, command line and zero page written', () => {
  const m = machine();
  const image = makeBzImage({ kernelLength: 0x3000, initSize: 0x40000 });
  const k = loadKernel(m.mem, m.ram, { kernelPath: 'bz', kernel: image, cmdline: 'console=ttyS0 quiet' }, 0xe0000);
  assert.is(k.format, 'bzImage');
  assert.is(k.entry, 0x100200);
  assert.is(k.kernelEnd, MiB + 0x40000, 'init_size, not the file size, bounds the kernel');
  assert.equal(m.bytes.subarray(MiB, MiB + 0x3000), image.subarray(5 * 512));
  assert.is(m.bytes[MiB + 0x3000], 0xaa, 'nothing past the kernel bytes');
  assert.is(cstr(m.bytes, 0x20000), 'console=ttyS0 quiet');
  const zp = 0x7000;
  assert.is(m.dv.getUint32(zp + 0x202, true), 0x53726448, 'header copied into the zero page');
  assert.is(m.bytes[zp + 0x210], 0xff);
  assert.is(m.dv.getUint32(zp + 0x228, true), 0x20000);
  assert.is(m.dv.getUint32(zp + 0x238, true), 'console=ttyS0 quiet'.length);
  assert.is(m.dv.getBigUint64(zp + 0x70, true), 0xe0000n);
  assert.is(m.bytes[zp + 0x1e8], 3, 'e820 entries');
  assert.is(m.dv.getUint32(zp + 0x218, true), 0, 'no initrd');
  assert.is(m.dv.getBigUint64(0x500 + 0x10, true), 0x00af9b000000ffffn, 'GDT at 0x500');
  assert.is(m.dv.getBigUint64(0x9000, true) & 1n, 1n, 'PML4 present');
});

test('initrd: page aligned, at the top of RAM, or below initrd_addr_max', () => {
  const initrd = new Uint8Array(10000).fill(7);
  let m = machine();
  let k = loadKernel(m.mem, m.ram, { kernelPath: 'bz', kernel: makeBzImage(), initrd, cmdline: '' });
  assert.equal(k.initrd, { addr: Math.floor((64 * MiB - 10000) / 4096) * 4096, size: 10000 });
  assert.is(k.initrd!.addr % 4096, 0);
  assert.ok(m.bytes.subarray(k.initrd!.addr, k.initrd!.addr + 10000).every((b) => b === 7));
  assert.is(m.dv.getUint32(0x7000 + 0x218, true), k.initrd!.addr);
  assert.is(m.dv.getUint32(0x7000 + 0x21c, true), 10000);

  m = machine();
  k = loadKernel(m.mem, m.ram, { kernelPath: 'bz', kernel: makeBzImage({ initrdAddrMax: 32 * MiB - 1 }), initrd, cmdline: '' });
  assert.ok(k.initrd!.addr + 10000 <= 32 * MiB, 'below initrd_addr_max');
  assert.is(k.initrd!.addr, Math.floor((32 * MiB - 10000) / 4096) * 4096);
});

test('initrd too large for memory: refused, says to use more --memory', () => {
  const m = machine(16 * MiB);
  throwsImageError(
    () => loadKernel(m.mem, m.ram, { kernelPath: 'bz', kernel: makeBzImage(), initrdPath: '/x/initrd', initrd: new Uint8Array(15 * MiB), cmdline: '' }),
    /^\/x\/initrd: .*use more --memory/,
  );
});

test('kernel whose init_size does not fit: refused before anything is written', () => {
  const m = machine(4 * MiB);
  throwsImageError(() => loadKernel(m.mem, m.ram, { kernelPath: 'bz', kernel: makeBzImage({ initSize: 8 * MiB }), cmdline: '' }), /--memory/);
  assert.is(m.bytes[MiB], 0xaa);
});

test('command line: the header limit is enforced, exactly the limit is accepted', () => {
  const kernel = makeBzImage({ cmdlineSize: 100 });
  const m = machine();
  throwsImageError(() => loadKernel(m.mem, m.ram, { kernelPath: 'bz', kernel, cmdline: 'x'.repeat(101) }), /101 bytes.*at most 100/);
  loadKernel(m.mem, m.ram, { kernelPath: 'bz', kernel, cmdline: 'y'.repeat(100) });
  assert.is(cstr(m.bytes, 0x20000), 'y'.repeat(100));
});

test('ELF: segments at their physical addresses, bss zeroed, entry from the header', () => {
  const m = machine();
  const k = loadKernel(m.mem, m.ram, { kernelPath: 'vmlinux', kernel: makeElf({ entry: ELF_SEG0.paddr + 4 }), cmdline: 'a' });
  assert.is(k.format, 'elf');
  assert.is(k.entry, ELF_SEG0.paddr + 4);
  assert.is(k.kernelEnd, ELF_SEG1.paddr + ELF_SEG1.memsz);
  assert.equal([...m.bytes.subarray(ELF_SEG0.paddr, ELF_SEG0.paddr + 8)], ELF_SEG0.data);
  assert.ok(m.bytes.subarray(ELF_SEG0.paddr + 8, ELF_SEG0.paddr + ELF_SEG0.memsz).every((b) => b === 0), 'bss zeroed');
  assert.equal([...m.bytes.subarray(ELF_SEG1.paddr, ELF_SEG1.paddr + 4)], ELF_SEG1.data);
  assert.is(m.bytes[ELF_SEG1.paddr + ELF_SEG1.memsz], 0xaa);
  assert.is(m.dv.getUint32(0x7000 + 0x202, true), 0x53726448, 'minimal header for ELF');
});

test('nonZeroRuns: page-sized steps, runs merged, a short tail kept, all zeros none', () => {
  const P = 0x1000;
  const d = new Uint8Array(5 * P + 10);
  assert.equal(nonZeroRuns(d), []);
  d[P + 7] = 1; // page 1
  d[2 * P] = 1; // page 2: one run with page 1
  d[4 * P + 3] = 1; // page 4
  d[5 * P + 9] = 1; // the 10-byte tail: same run as page 4
  assert.equal(nonZeroRuns(d), [[P, 3 * P], [4 * P, 5 * P + 10]]);
  assert.equal(nonZeroRuns(new Uint8Array([0, 0, 3])), [[0, 3]]);
  assert.equal(nonZeroRuns(new Uint8Array(0)), []);
});

test('ELF into zeroed RAM: zero pages and bss are not written, the rest is', () => {
  // RAM that is not zero shows what was written: the bss (zeros) is skipped.
  const m = machine();
  loadKernel(m.mem, m.ram, { kernelPath: 'vmlinux', kernel: makeElf(), cmdline: 'a', ramZeroed: true });
  assert.equal([...m.bytes.subarray(ELF_SEG0.paddr, ELF_SEG0.paddr + 8)], ELF_SEG0.data);
  assert.equal([...m.bytes.subarray(ELF_SEG1.paddr, ELF_SEG1.paddr + 4)], ELF_SEG1.data);
  assert.is(m.bytes[ELF_SEG0.paddr + 8], 0xaa, 'the bss is left as it is');
});

needs(NO_KERNEL)('the default kernel\'s vmlinux into zeroed RAM: the same bytes as copied whole', () => {
  const k = cachedKernel()!;
  const kernel = new Uint8Array(readFileSync(k.kernel));
  const vmlinux = new Uint8Array(readFileSync(k.vmlinux));
  const size = 128 * MiB;
  const load = (ramZeroed: boolean) => {
    const bytes = new Uint8Array(size);
    loadKernel(new GuestMemory([{ gpa: 0, bytes }]), [{ gpa: 0, size }], { kernelPath: k.kernel, kernel, vmlinux, cmdline: 'quiet', ramZeroed });
    return bytes;
  };
  const whole = load(false);
  const skipped = load(true);
  assert.ok(Buffer.compare(whole, skipped) === 0, 'identical guest RAM');
  // With the runs a scan found (what a boot records), the same RAM again without a scan.
  const scannedRam = new Uint8Array(size);
  const scan = loadKernel(new GuestMemory([{ gpa: 0, bytes: scannedRam }]), [{ gpa: 0, size }], { kernelPath: k.kernel, kernel, vmlinux, cmdline: 'quiet', ramZeroed: true });
  assert.ok(scan.runs && scan.runs.length >= 2, 'the scan reports its runs');
  const known = new Uint8Array(size);
  const again = loadKernel(new GuestMemory([{ gpa: 0, bytes: known }]), [{ gpa: 0, size }], { kernelPath: k.kernel, kernel, vmlinux, cmdline: 'quiet', ramZeroed: true, vmlinuxRuns: scan.runs });
  assert.is(again.runs, undefined, 'not scanned');
  assert.ok(Buffer.compare(whole, known) === 0, 'identical guest RAM from the recorded runs');
});

test('a bzImage\'s vmlinux into zeroed RAM with recorded runs: only those written; runs that do not fit the segments are not used', () => {
  const bz = makeBzImage();
  const elf = makeElf();
  // A run that leaves out the segment's last 4 bytes: the RAM shows it was used as given.
  const partial = [[[0, 4]], [[0, ELF_SEG1.data.length]]] as const;
  const m = machine();
  const r = loadKernel(m.mem, m.ram, { kernelPath: 'bz', kernel: bz, vmlinux: elf, cmdline: 'a', ramZeroed: true, vmlinuxRuns: partial });
  assert.is(r.runs, undefined);
  assert.equal([...m.bytes.subarray(ELF_SEG0.paddr, ELF_SEG0.paddr + 8)], [...ELF_SEG0.data.slice(0, 4), 0xaa, 0xaa, 0xaa, 0xaa]);
  // Wrong segment count, a run past its segment, overlapping or non-integer runs, not arrays: scanned instead.
  const bad: unknown[] = [[[[0, 8]]], [[[0, 9]], [[0, 4]]], [[[0, 4], [2, 8]], [[0, 4]]], [[[0, 1.5]], [[0, 4]]], [[5], [[0, 4]]], 'x'];
  for (const runs of bad) {
    const b = machine();
    const loaded = loadKernel(b.mem, b.ram, { kernelPath: 'bz', kernel: bz, vmlinux: elf, cmdline: 'a', ramZeroed: true, vmlinuxRuns: runs as never });
    assert.ok(loaded.runs, `scanned for ${JSON.stringify(runs)}`);
    assert.equal([...b.bytes.subarray(ELF_SEG0.paddr, ELF_SEG0.paddr + 8)], ELF_SEG0.data, JSON.stringify(runs));
  }
});

test('probeKernel: format of good images; text, empty and broken files refused', () => {
  assert.is(probeKernel('bz', makeBzImage()), 'bzImage');
  assert.is(probeKernel('elf', makeElf()), 'elf');
  throwsImageError(() => probeKernel('/etc/motd', new TextEncoder().encode('hello, this is text\n'.repeat(300))), /^\/etc\/motd: not a Linux kernel/);
  throwsImageError(() => probeKernel('e', new Uint8Array(0)), /empty/);
  throwsImageError(() => probeKernel('old', makeBzImage({ version: 0x0200 })), /too old/);
  throwsImageError(() => probeKernel('dyn', makeElf({ type: 3 })), /ET_EXEC/);
});

test.run();
