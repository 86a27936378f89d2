// bzImage loader for the 64-bit boot protocol: validates the setup header, copies the
// protected-mode kernel to 1 MiB, and hands back the header bytes to seed the zero page with.
// Entry is the load address + 0x200 (startup_64 of the decompressor).

import { KernelImageError } from './errors';
import { BOOT_FLAG_MAGIC, HDRS_MAGIC, SetupHeader, XLF_KERNEL_64 } from './setup-header';

/** 2.12 is the first protocol with xloadflags (so we can check for a 64-bit entry). */
export const MIN_BOOT_PROTOCOL = 0x020c;

export interface BzImage {
  /** Boot protocol version, e.g. 0x020f. */
  version: number;
  /** The setup header bytes, from offset 0x1f1 up to its end: copied into the zero page. */
  header: Uint8Array;
  /** The protected-mode kernel (everything after the real-mode setup sectors). */
  kernel: Uint8Array;
  /** Memory the kernel needs from its load address while it decompresses. */
  initSize: number;
  initrdAddrMax: number;
  cmdlineSize: number;
}

export function isBzImage(image: Uint8Array): boolean {
  if (image.length < 0x206) return false;
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  return dv.getUint32(SetupHeader.header, true) === HDRS_MAGIC;
}

export function parseBzImage(path: string, image: Uint8Array): BzImage {
  if (image.length < 0x1000) throw new KernelImageError(path, `too short for a bzImage (${image.length} bytes)`);
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (dv.getUint16(SetupHeader.bootFlag, true) !== BOOT_FLAG_MAGIC || dv.getUint32(SetupHeader.header, true) !== HDRS_MAGIC) {
    throw new KernelImageError(path, 'not a bzImage (no 0xAA55 boot flag / "HdrS" header)');
  }
  const version = dv.getUint16(SetupHeader.version, true);
  if (version < MIN_BOOT_PROTOCOL) {
    throw new KernelImageError(path, `boot protocol ${fmtVersion(version)} is too old (need >= ${fmtVersion(MIN_BOOT_PROTOCOL)})`);
  }
  if (!(dv.getUint16(SetupHeader.xloadflags, true) & XLF_KERNEL_64)) {
    throw new KernelImageError(path, 'kernel has no 64-bit entry point (XLF_KERNEL_64 not set)');
  }
  const setupSects = dv.getUint8(SetupHeader.setupSects) || 4;
  const kernelOffset = (setupSects + 1) * 512;
  const syssize = dv.getUint32(0x1f4, true) * 16; // in 16-byte paragraphs
  if (kernelOffset >= image.length || kernelOffset + syssize > image.length) {
    throw new KernelImageError(path, `truncated: setup header says ${kernelOffset + syssize} bytes, file has ${image.length}`);
  }
  const headerEnd = 0x202 + dv.getUint8(SetupHeader.jump + 1);
  return {
    version,
    header: image.slice(0x1f1, headerEnd),
    kernel: image.subarray(kernelOffset),
    initSize: dv.getUint32(SetupHeader.initSize, true),
    initrdAddrMax: dv.getUint32(SetupHeader.initrdAddrMax, true),
    cmdlineSize: dv.getUint32(SetupHeader.cmdlineSize, true),
  };
}

const fmtVersion = (v: number) => `${v >> 8}.${(v & 0xff).toString().padStart(2, '0')}`;
