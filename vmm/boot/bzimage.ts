// bzImage loader for the 64-bit boot protocol: validates the setup header, copies the
// protected-mode kernel to 1 MiB, and hands back the header bytes to seed the zero page with.
// Entry is the load address + 0x200 (startup_64 of the decompressor).

import { KernelImageError } from './errors';
import { BOOT_FLAG_MAGIC, BootParams, HDRS_MAGIC, HEADER_JUMP_BASE, SetupHeader, XLF_KERNEL_64 } from './setup-header';

/** The setup header's offset in the file (a bzImage starts like boot_params). */
const HDR = BootParams.offsets.hdr;

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
  /** The compressed vmlinux inside `kernel` (protocol 2.08+): its offset there and length. */
  payloadOffset: number;
  payloadLength: number;
}

export function isBzImage(image: Uint8Array): boolean {
  const at = HDR + SetupHeader.offsets.header;
  if (image.length < at + 4) return false;
  return new DataView(image.buffer, image.byteOffset, image.byteLength).getUint32(at, true) === HDRS_MAGIC;
}

export function parseBzImage(path: string, image: Uint8Array): BzImage {
  if (image.length < 0x1000) throw new KernelImageError(path, `too short for a bzImage (${image.length} bytes)`);
  const h = SetupHeader.read(image, HDR);
  if (h.bootFlag !== BOOT_FLAG_MAGIC || h.header !== HDRS_MAGIC) {
    throw new KernelImageError(path, 'not a bzImage (no 0xAA55 boot flag / "HdrS" header)');
  }
  const version = h.version;
  if (version < MIN_BOOT_PROTOCOL) {
    throw new KernelImageError(path, `boot protocol ${fmtVersion(version)} is too old (need >= ${fmtVersion(MIN_BOOT_PROTOCOL)})`);
  }
  if (!(h.xloadflags & XLF_KERNEL_64)) {
    throw new KernelImageError(path, 'kernel has no 64-bit entry point (XLF_KERNEL_64 not set)');
  }
  const setupSects = h.setupSects || 4;
  const kernelOffset = (setupSects + 1) * 512;
  const syssize = h.syssize * 16; // in 16-byte paragraphs
  if (kernelOffset >= image.length || kernelOffset + syssize > image.length) {
    throw new KernelImageError(path, `truncated: setup header says ${kernelOffset + syssize} bytes, file has ${image.length}`);
  }
  // The jump instruction's offset byte (the high byte of `jump`) says where the header ends.
  const headerEnd = HEADER_JUMP_BASE + (h.jump >> 8);
  return {
    version,
    header: image.slice(HDR, headerEnd),
    kernel: image.subarray(kernelOffset),
    initSize: h.initSize,
    initrdAddrMax: h.initrdAddrMax,
    cmdlineSize: h.cmdlineSize,
    payloadOffset: h.payloadOffset,
    payloadLength: h.payloadLength,
  };
}

const fmtVersion = (v: number) => `${v >> 8}.${(v & 0xff).toString().padStart(2, '0')}`;
