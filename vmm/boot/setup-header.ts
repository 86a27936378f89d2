// The Linux x86 boot protocol's `struct setup_header` and the zero page (`struct boot_params`)
// fields tsvmm reads or writes: offsets in one place (Documentation/arch/x86/boot.rst,
// arch/x86/include/uapi/asm/bootparam.h). Offsets are from the start of boot_params, which is
// also where the header sits in a bzImage file.

export const BootParams = {
  size: 0x1000,
  acpiRsdpAddr: 0x070,
  extRamdiskImage: 0x0c0,
  extRamdiskSize: 0x0c4,
  extCmdLinePtr: 0x0c8,
  e820Entries: 0x1e8,
  /** The setup header starts here and ends at 0x202 + the jump byte at 0x201. */
  hdr: 0x1f1,
  e820Table: 0x2d0,
  e820Max: 128,
} as const;

export const SetupHeader = {
  setupSects: 0x1f1,
  bootFlag: 0x1fe,
  jump: 0x200,
  header: 0x202,
  version: 0x206,
  typeOfLoader: 0x210,
  loadflags: 0x211,
  ramdiskImage: 0x218,
  ramdiskSize: 0x21c,
  heapEndPtr: 0x224,
  cmdLinePtr: 0x228,
  initrdAddrMax: 0x22c,
  kernelAlignment: 0x230,
  relocatableKernel: 0x234,
  xloadflags: 0x236,
  cmdlineSize: 0x238,
  payloadOffset: 0x248,
  payloadLength: 0x24c,
  prefAddress: 0x258,
  initSize: 0x260,
} as const;

export const BOOT_FLAG_MAGIC = 0xaa55;
export const HDRS_MAGIC = 0x53726448; // "HdrS"
export const LOADED_HIGH = 0x01;
export const KEEP_SEGMENTS = 0x40;
export const CAN_USE_HEAP = 0x80;
export const XLF_KERNEL_64 = 0x01;
export const LOADER_TYPE_UNDEFINED = 0xff;

/** struct boot_e820_entry: addr u64, size u64, type u32 (packed, 20 bytes). */
export const E820Entry = { size: 20, addr: 0, len: 8, type: 16 } as const;
export const E820_RAM = 1;
export const E820_RESERVED = 2;
