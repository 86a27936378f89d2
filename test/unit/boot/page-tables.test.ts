// The identity page tables (vmm/boot/page-tables.ts), walked the way the MMU walks them in
// long mode with 2 MiB pages: PML4[47:39] → PDPT[38:30] → PD[29:21] (PS=1) + offset[20:0].
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { identityPageTables } from '../../../vmm/boot/page-tables';
import { PML4_ADDR } from '../../../vmm/layout';

const tables = identityPageTables();
/** Physical memory holding only the tables: entry i of the table at `base`. */
function entry(base: number, i: number): bigint {
  const t = tables.find((x) => x.addr === base);
  if (!t) throw new Error(`walk reached 0x${base.toString(16)}, which holds no table`);
  return new DataView(t.bytes.buffer, t.bytes.byteOffset).getBigUint64(i * 8, true);
}
const ADDR_MASK = 0x000f_ffff_ffff_f000n;

/** Translates a linear address; throws on a not-present entry. */
function translate(va: number): { pa: number; pageSize: number } {
  const v = BigInt(va);
  const pml4e = entry(PML4_ADDR, Number((v >> 39n) & 511n));
  if (!(pml4e & 1n)) throw new Error('PML4E not present');
  assert.is(pml4e & 0x80n, 0n, 'PS must be 0 in a PML4E');
  const pdpte = entry(Number(pml4e & ADDR_MASK), Number((v >> 30n) & 511n));
  if (!(pdpte & 1n)) throw new Error('PDPTE not present');
  assert.is(pdpte & 0x80n, 0n, 'no 1 GiB pages expected');
  const pde = entry(Number(pdpte & ADDR_MASK), Number((v >> 21n) & 511n));
  if (!(pde & 1n)) throw new Error('PDE not present');
  assert.is(pde & 0x80n, 0x80n, 'PDE maps a 2 MiB page');
  assert.is(pde & 2n, 2n, 'writable');
  const base = pde & 0x000f_ffff_ffe0_0000n;
  return { pa: Number(base | (v & 0x1f_ffffn)), pageSize: 0x20_0000 };
}

test('identity map: 0, 1 MiB, 0x1234567, 3 GiB+5, 4 GiB-1', () => {
  for (const va of [0, 0x100000, 0x1234567, 3 * 0x4000_0000 + 5, 0xffff_ffff]) {
    const t = translate(va);
    assert.is(t.pa, va, `0x${va.toString(16)}`);
    assert.is(t.pageSize, 0x20_0000);
  }
});

test('nothing mapped at or above 4 GiB', () => {
  assert.throws(() => translate(0x1_0000_0000), /not present/);
  assert.throws(() => translate(0x80_0000_0000), /not present/);
});

test('tables sit below 1 MiB, page aligned, 4 KiB each, no overlap', () => {
  assert.is(tables.length, 6);
  const addrs = tables.map((t) => t.addr).sort((a, b) => a - b);
  for (const t of tables) {
    assert.is(t.bytes.length, 4096);
    assert.is(t.addr % 4096, 0);
    assert.ok(t.addr + 4096 <= 0x9fc00);
  }
  for (let i = 1; i < addrs.length; i++) assert.ok(addrs[i]! >= addrs[i - 1]! + 4096);
});

test.run();
