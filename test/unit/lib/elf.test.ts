// lib/elf.ts against the system's <elf.h> (test/unit/abi.ts): every struct, field and constant
// both ELF readers (vmm/boot/elf.ts, bpf/elf.ts) rely on.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { AbiExpectations } from '../abi';
import * as E from '../../../lib/elf';

test('ELF64 structs and constants match <elf.h>', () => {
  const abi = new AbiExpectations();
  for (const s of [E.Elf64Ehdr, E.Elf64Phdr, E.Elf64Shdr, E.Elf64Sym, E.Elf64Rel, E.Elf64Nhdr]) abi.struct(s, { cType: s.name });
  const consts: [string, number][] = [
    ['EI_CLASS', E.EI_CLASS], ['EI_DATA', E.EI_DATA], ['ELFCLASS64', E.ELFCLASS64], ['ELFDATA2LSB', E.ELFDATA2LSB],
    ['ET_REL', E.ET_REL], ['ET_EXEC', E.ET_EXEC], ['EM_X86_64', E.EM_X86_64], ['EM_BPF', E.EM_BPF], ['PT_LOAD', E.PT_LOAD],
    ['PT_NOTE', E.PT_NOTE], ['SHT_SYMTAB', E.SHT_SYMTAB], ['SHT_NOBITS', E.SHT_NOBITS], ['SHT_REL', E.SHT_REL],
    ['SHF_EXECINSTR', E.SHF_EXECINSTR], ['SHN_UNDEF', E.SHN_UNDEF], ['STT_FUNC', E.STT_FUNC], ['STT_SECTION', E.STT_SECTION],
    ['STB_GLOBAL', E.STB_GLOBAL], ['ELFMAG0', E.ELFMAG[0]!], ['ELFMAG1', E.ELFMAG[1]!], ['ELFMAG2', E.ELFMAG[2]!], ['ELFMAG3', E.ELFMAG[3]!],
    // st_info and r_info packing, on a sample value.
    ['ELF64_ST_TYPE(0x12)', E.stType(0x12)], ['ELF64_ST_BIND(0x12)', E.stBind(0x12)],
    ['ELF64_R_SYM(0x0000000700000001ULL)', E.relSym(0x0000000700000001n)], ['ELF64_R_TYPE(0x0000000700000001ULL)', E.relType(0x0000000700000001n)],
  ];
  for (const [c, v] of consts) abi.want(c, v);
  assert.equal(abi.mismatches(['elf.h']), []);
  assert.ok(abi.count > 100, `checked ${abi.count} values`);
});

test.run();
