// Synthetic kernel images for the boot tests (a minimal bzImage header, a small ELF64 vmlinux)
// and the cached Debian kernel, when one is there. Offsets are written out here on purpose,
// from Documentation/arch/x86/boot.rst and the ELF spec, not imported from the code under test.
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

export interface BzOptions {
  setupSects?: number;
  version?: number;
  xloadflags?: number;
  kernelLength?: number;
  /** Overrides syssize (16-byte paragraphs); default: the kernel length. */
  syssize?: number;
  initSize?: number;
  initrdAddrMax?: number;
  cmdlineSize?: number;
  magic?: number;
}

/** A bzImage with a protocol 2.15 header; the protected-mode part is bytes i & 0xff. */
export function makeBzImage(o: BzOptions = {}): Uint8Array {
  const setupSects = o.setupSects ?? 4;
  const kernelLength = o.kernelLength ?? 0x2000;
  const kernelOffset = (setupSects + 1) * 512;
  const img = new Uint8Array(kernelOffset + kernelLength);
  const dv = new DataView(img.buffer);
  img[0x1f1] = setupSects;
  dv.setUint32(0x1f4, o.syssize ?? Math.ceil(kernelLength / 16), true);
  dv.setUint16(0x1fe, 0xaa55, true);
  img[0x200] = 0xeb; // jmp short: header ends at 0x202 + this byte
  img[0x201] = 0x66;
  dv.setUint32(0x202, o.magic ?? 0x53726448, true);
  dv.setUint16(0x206, o.version ?? 0x020f, true);
  img[0x211] = 0x01; // LOADED_HIGH
  dv.setUint32(0x22c, o.initrdAddrMax ?? 0x7fffffff, true);
  dv.setUint32(0x230, 0x200000, true);
  dv.setUint16(0x236, o.xloadflags ?? 0x3, true);
  dv.setUint32(0x238, o.cmdlineSize ?? 2047, true);
  dv.setUint32(0x260, o.initSize ?? 0x10000, true);
  for (let i = 0; i < kernelLength; i++) img[kernelOffset + i] = i & 0xff;
  return img;
}

export interface ElfOptions {
  klass?: number;
  data?: number;
  machine?: number;
  type?: number;
  entry?: number;
  /** Make segment 1's file range end past the file. */
  truncate?: boolean;
  pvhEntry?: number;
}

export const ELF_SEG0 = { paddr: 0x100_0000, data: [1, 2, 3, 4, 5, 6, 7, 8], memsz: 0x1000 };
export const ELF_SEG1 = { paddr: 0x100_2000, data: [9, 10, 11, 12], memsz: 0x2000 };

/** ELF64 x86-64 ET_EXEC: two PT_LOAD segments and a PT_NOTE holding a Xen PHYS32_ENTRY note. */
export function makeElf(o: ElfOptions = {}): Uint8Array {
  const ehsize = 64;
  const phentsize = 56;
  const phnum = 3;
  const note = xenNote(18, o.pvhEntry ?? 0x100_0100);
  const dataOff = ehsize + phnum * phentsize;
  const seg0Off = dataOff;
  const seg1Off = seg0Off + ELF_SEG0.data.length;
  const noteOff = seg1Off + ELF_SEG1.data.length;
  const img = new Uint8Array(noteOff + note.length);
  const dv = new DataView(img.buffer);
  img.set([0x7f, 0x45, 0x4c, 0x46, o.klass ?? 2, o.data ?? 1, 1]);
  dv.setUint16(16, o.type ?? 2, true);
  dv.setUint16(18, o.machine ?? 62, true);
  dv.setUint32(20, 1, true);
  dv.setBigUint64(24, BigInt(o.entry ?? 0x100_0000), true);
  dv.setBigUint64(32, BigInt(ehsize), true);
  dv.setUint16(52, ehsize, true);
  dv.setUint16(54, phentsize, true);
  dv.setUint16(56, phnum, true);
  const phdr = (i: number, type: number, offset: number, paddr: number, filesz: number, memsz: number) => {
    const p = ehsize + i * phentsize;
    dv.setUint32(p, type, true);
    dv.setUint32(p + 4, 7, true);
    dv.setBigUint64(p + 8, BigInt(offset), true);
    dv.setBigUint64(p + 16, 0xffffffff80000000n + BigInt(paddr), true); // vaddr: the kernel's, unused
    dv.setBigUint64(p + 24, BigInt(paddr), true);
    dv.setBigUint64(p + 32, BigInt(filesz), true);
    dv.setBigUint64(p + 40, BigInt(memsz), true);
  };
  phdr(0, 1, seg0Off, ELF_SEG0.paddr, ELF_SEG0.data.length, ELF_SEG0.memsz);
  phdr(1, 1, seg1Off, ELF_SEG1.paddr, ELF_SEG1.data.length + (o.truncate ? 0x100 : 0), ELF_SEG1.memsz);
  phdr(2, 4, noteOff, 0, note.length, note.length);
  img.set(ELF_SEG0.data, seg0Off);
  img.set(ELF_SEG1.data, seg1Off);
  img.set(note, noteOff);
  return img;
}

/** An unrelated note first ("GNU", type 3), then the Xen one: the parser must walk past it. */
function xenNote(type: number, value: number): Uint8Array {
  const b = new Uint8Array(16 + 8 + 12 + 4 + 4);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, 4, true); dv.setUint32(4, 8, true); dv.setUint32(8, 3, true);
  b.set([0x47, 0x4e, 0x55, 0], 12); // "GNU\0", desc 8 bytes of zero at 16
  const x = 24;
  dv.setUint32(x, 4, true); dv.setUint32(x + 4, 4, true); dv.setUint32(x + 8, type, true);
  b.set([0x58, 0x65, 0x6e, 0], x + 12); // "Xen\0"
  dv.setUint32(x + 16, value, true);
  return b;
}

/** The default kernel tools/guest/fetch-kernel.sh cached (its kernel.json record), or undefined. */
export function cachedKernel(): { kernel: string; vmlinux: string } | undefined {
  const record = join(process.env.TSVMM_CACHE || join(homedir(), '.cache/tsvmm'), 'kernel/kernel.json');
  if (!existsSync(record)) return undefined;
  const r = JSON.parse(readFileSync(record, 'utf8')) as { kernel?: string; vmlinux?: string };
  return r.kernel && r.vmlinux && existsSync(r.kernel) && existsSync(r.vmlinux) ? { kernel: r.kernel, vmlinux: r.vmlinux } : undefined;
}

/** Why the tests of the cached kernel cannot run (test/needs.ts), or undefined. */
export const NO_KERNEL = cachedKernel() ? undefined : 'needs the default kernel (tools/guest/fetch-kernel.sh; npm test fetches it before the unit tests)';
