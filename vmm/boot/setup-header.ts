// The Linux x86 boot protocol's `struct setup_header` and the zero page (`struct boot_params`)
// fields tsvmm reads or writes, described once with lib/struct.ts (Documentation/arch/x86/
// boot.rst, arch/x86/include/uapi/asm/bootparam.h; test/unit/boot/abi.test.ts checks them
// against that header). A bzImage file starts like boot_params: its setup header sits at the
// same offset, BootParams.offsets.hdr.

import { bytes, nested, struct, u16, u32, u64, u8 } from '../../lib/struct';

/** struct setup_header (packed). A kernel's own header may end earlier: `jump` says where. */
export const SetupHeader = struct('setup_header', 0x7b, {
  setupSects: u8(0x00), rootFlags: u16(0x01), syssize: u32(0x03), ramSize: u16(0x07), vidMode: u16(0x09),
  rootDev: u16(0x0b), bootFlag: u16(0x0d), jump: u16(0x0f), header: u32(0x11), version: u16(0x15),
  realmodeSwtch: u32(0x17), startSysSeg: u16(0x1b), kernelVersion: u16(0x1d), typeOfLoader: u8(0x1f),
  loadflags: u8(0x20), setupMoveSize: u16(0x21), code32Start: u32(0x23), ramdiskImage: u32(0x27),
  ramdiskSize: u32(0x2b), bootsectKludge: u32(0x2f), heapEndPtr: u16(0x33), extLoaderVer: u8(0x35),
  extLoaderType: u8(0x36), cmdLinePtr: u32(0x37), initrdAddrMax: u32(0x3b), kernelAlignment: u32(0x3f),
  relocatableKernel: u8(0x43), minAlignment: u8(0x44), xloadflags: u16(0x45), cmdlineSize: u32(0x47),
  hardwareSubarch: u32(0x4b), hardwareSubarchData: u64(0x4f), payloadOffset: u32(0x57), payloadLength: u32(0x5b),
  setupData: u64(0x5f), prefAddress: u64(0x67), initSize: u32(0x6f), handoverOffset: u32(0x73),
  kernelInfoOffset: u32(0x77),
});

/** struct boot_e820_entry (packed). */
export const E820Entry = struct('boot_e820_entry', 20, { addr: u64(0), size: u64(8), type: u32(16) });
export const E820_MAX_ENTRIES_ZEROPAGE = 128;

/** struct boot_params: the zero page. */
export const BootParams = struct('boot_params', 0x1000, {
  acpiRsdpAddr: u64(0x070),
  e820Entries: u8(0x1e8),
  hdr: nested(0x1f1, SetupHeader),
  e820Table: bytes(0x2d0, E820_MAX_ENTRIES_ZEROPAGE * E820Entry.size),
});

/** Where the header's variable end is counted from: the jump's target is 0x202 + its second byte. */
export const HEADER_JUMP_BASE = 0x202;

export const BOOT_FLAG_MAGIC = 0xaa55;
export const HDRS_MAGIC = 0x53726448; // "HdrS"
export const LOADED_HIGH = 0x01;
export const CAN_USE_HEAP = 0x80;
export const XLF_KERNEL_64 = 0x01;
export const LOADER_TYPE_UNDEFINED = 0xff;
export const E820_RAM = 1;
export const E820_RESERVED = 2;
