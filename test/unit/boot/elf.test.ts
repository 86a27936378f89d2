// ELF vmlinux parsing (vmm/boot/elf.ts): a synthetic ELF64 with two PT_LOAD and a PVH note,
// each refusal, and the cached Debian kernel's vmlinux.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync } from 'node:fs';
import { isElf, parseElf } from '../../../vmm/boot/elf';
import { KernelImageError } from '../../../vmm/boot/errors';
import { needs } from '../../needs';
import { ELF_SEG0, ELF_SEG1, NO_KERNEL, cachedKernel, makeElf } from './images';

function refuses(image: Uint8Array, re: RegExp): void {
  try {
    parseElf('/k/vmlinux', image);
  } catch (e) {
    assert.instance(e, KernelImageError);
    assert.ok((e as Error).message.startsWith('/k/vmlinux: '), (e as Error).message);
    assert.match((e as Error).message, re);
    return;
  }
  assert.unreachable('parseElf accepted a bad image');
}

test('segments, entry and the PVH entry of a synthetic vmlinux', () => {
  const img = makeElf({ entry: 0x100_2010, pvhEntry: 0x100_0abc });
  assert.ok(isElf(img));
  const k = parseElf('k', img);
  assert.is(k.entry, 0x100_2010);
  assert.is(k.pvhEntry, 0x100_0abc);
  assert.is(k.segments.length, 2, 'PT_NOTE is not a segment to load');
  assert.equal(k.segments.map((s) => [s.paddr, [...s.data], s.memsz]), [
    [ELF_SEG0.paddr, ELF_SEG0.data, ELF_SEG0.memsz],
    [ELF_SEG1.paddr, ELF_SEG1.data, ELF_SEG1.memsz],
  ]);
  assert.is(k.end, ELF_SEG1.paddr + ELF_SEG1.memsz);
});

test('entry in the bss part of a segment (past filesz, below memsz) is inside', () => {
  assert.is(parseElf('k', makeElf({ entry: ELF_SEG0.paddr + 0x800 })).entry, ELF_SEG0.paddr + 0x800);
});

test('refuses: 32-bit, big-endian, wrong machine, ET_DYN', () => {
  refuses(makeElf({ klass: 1 }), /64-bit little-endian/);
  refuses(makeElf({ data: 2 }), /64-bit little-endian/);
  refuses(makeElf({ machine: 183 }), /machine 183 is not x86-64/);
  refuses(makeElf({ type: 3 }), /ET_EXEC/);
});

test('refuses: segment past the end of the file, truncated headers, not ELF', () => {
  refuses(makeElf({ truncate: true }), /segment 1 ends past the file/);
  refuses(makeElf().subarray(0, 100), /program headers/);
  refuses(new Uint8Array(64), /not an ELF/);
  refuses(new Uint8Array(0), /not an ELF/);
  assert.not.ok(isElf(new Uint8Array(2)));
});

test('refuses: entry outside every segment (a virtual address, say)', () => {
  refuses(makeElf({ entry: 0x100_1000 }), /entry point 0x1001000 is not .* inside a segment/);
  refuses(makeElf({ entry: 0x80000000 }), /entry point/);
});

needs(NO_KERNEL)('the cached Debian vmlinux (unpacked from its bzImage by fetch-kernel.sh) parses; entry is inside a segment', () => {
  const vmlinux = new Uint8Array(readFileSync(cachedKernel()!.vmlinux));
  const k = parseElf('vmlinux', vmlinux);
  assert.ok(k.segments.length >= 2);
  assert.ok(k.segments.some((s) => k.entry >= s.paddr && k.entry < s.paddr + s.data.length), 'entry is in loaded bytes');
  assert.ok(k.segments.every((s) => s.paddr >= 0x100000 && s.paddr < 0x1_0000_0000), 'physical addresses, low');
  assert.ok(k.end > k.entry);
});

test.run();
