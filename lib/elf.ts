// ELF64 little-endian layouts and constants (<elf.h>), described once for both of tsvmm's ELF
// readers: the vmlinux loader (vmm/boot/elf.ts) and the eBPF object loader (bpf/elf.ts).
// test/unit/lib/elf.test.ts checks every size, offset and constant against the system header.
// It parses nothing itself.

import { bytes, struct, u16, u32, u64, u8 } from './struct';

export const ELFMAG = Uint8Array.of(0x7f, 0x45, 0x4c, 0x46); // "\x7fELF"
export const EI_CLASS = 4;
export const EI_DATA = 5;
export const ELFCLASS64 = 2;
export const ELFDATA2LSB = 1;

export const ET_REL = 1;
export const ET_EXEC = 2;
export const EM_X86_64 = 62;
export const EM_BPF = 247;

export const Elf64Ehdr = struct('Elf64_Ehdr', 64, {
  ident: bytes(0, 16, 'e_ident'), type: u16(16, 'e_type'), machine: u16(18, 'e_machine'), version: u32(20, 'e_version'),
  entry: u64(24, 'e_entry'), phoff: u64(32, 'e_phoff'), shoff: u64(40, 'e_shoff'), flags: u32(48, 'e_flags'),
  ehsize: u16(52, 'e_ehsize'), phentsize: u16(54, 'e_phentsize'), phnum: u16(56, 'e_phnum'), shentsize: u16(58, 'e_shentsize'),
  shnum: u16(60, 'e_shnum'), shstrndx: u16(62, 'e_shstrndx'),
});

export const PT_LOAD = 1;
export const PT_NOTE = 4;
export const Elf64Phdr = struct('Elf64_Phdr', 56, {
  type: u32(0, 'p_type'), flags: u32(4, 'p_flags'), offset: u64(8, 'p_offset'), vaddr: u64(16, 'p_vaddr'), paddr: u64(24, 'p_paddr'),
  filesz: u64(32, 'p_filesz'), memsz: u64(40, 'p_memsz'), align: u64(48, 'p_align'),
});

export const SHT_SYMTAB = 2;
export const SHT_NOBITS = 8;
export const SHT_REL = 9;
export const SHF_EXECINSTR = 0x4;
export const SHN_UNDEF = 0;
export const Elf64Shdr = struct('Elf64_Shdr', 64, {
  name: u32(0, 'sh_name'), type: u32(4, 'sh_type'), flags: u64(8, 'sh_flags'), addr: u64(16, 'sh_addr'), offset: u64(24, 'sh_offset'),
  size: u64(32, 'sh_size'), link: u32(40, 'sh_link'), info: u32(44, 'sh_info'), addralign: u64(48, 'sh_addralign'),
  entsize: u64(56, 'sh_entsize'),
});

export const STT_FUNC = 2;
export const STT_SECTION = 3;
export const STB_GLOBAL = 1;
/** st_info: binding in the high nibble, type in the low one (ELF64_ST_BIND / ELF64_ST_TYPE). */
export const stType = (info: number): number => info & 0xf;
export const stBind = (info: number): number => info >> 4;
export const Elf64Sym = struct('Elf64_Sym', 24, {
  name: u32(0, 'st_name'), info: u8(4, 'st_info'), other: u8(5, 'st_other'), shndx: u16(6, 'st_shndx'), value: u64(8, 'st_value'),
  size: u64(16, 'st_size'),
});

/** r_info: symbol index in the high 32 bits, relocation type in the low 32 (ELF64_R_SYM / ELF64_R_TYPE). */
export const relSym = (info: bigint): number => Number(info >> 32n);
export const relType = (info: bigint): number => Number(info & 0xffff_ffffn);
export const Elf64Rel = struct('Elf64_Rel', 16, { offset: u64(0, 'r_offset'), info: u64(8, 'r_info') });

/** A note's header; name and descriptor follow, each padded to 4 bytes. */
export const Elf64Nhdr = struct('Elf64_Nhdr', 12, { namesz: u32(0, 'n_namesz'), descsz: u32(4, 'n_descsz'), type: u32(8, 'n_type') });

/** Whether `image` starts with the ELF magic. */
export const hasElfMagic = (image: Uint8Array): boolean => image.length >= ELFMAG.length && ELFMAG.every((b, i) => image[i] === b);
