// Identity page tables for the 64-bit entry: one PML4, one PDPT and four page directories of
// 2 MiB pages cover the first 4 GiB, which holds everything the VMM places for the kernel.

import { PD_ADDR, PDPT_ADDR, PML4_ADDR } from '../layout';
import { type BitLayout, pack } from '../../lib/bits';

/** A page-directory entry mapping a 2 MiB page, or a table entry pointing at the next level. */
const PageEntry = {
  present: [0, 1], writable: [1, 1], user: [2, 1], pageSize: [7, 1], addr: [12, 40],
} as const satisfies BitLayout<string>;

const PAGE = 0x1000;
const TWO_MIB = 0x20_0000;

/** The tables as [address, bytes] pairs to copy into guest memory; cr3 = PML4_ADDR. */
export function identityPageTables(): { addr: number; bytes: Uint8Array }[] {
  const table = (fill: (i: number) => bigint) => {
    const b = new BigUint64Array(512);
    for (let i = 0; i < 512; i++) b[i] = fill(i);
    return new Uint8Array(b.buffer);
  };
  const next = (addr: number) => pack(PageEntry, { present: 1, writable: 1, addr: addr / PAGE });
  const out = [
    { addr: PML4_ADDR, bytes: table((i) => (i === 0 ? next(PDPT_ADDR) : 0n)) },
    { addr: PDPT_ADDR, bytes: table((i) => (i < 4 ? next(PD_ADDR + i * PAGE) : 0n)) },
  ];
  for (let d = 0; d < 4; d++) {
    out.push({
      addr: PD_ADDR + d * PAGE,
      bytes: table((i) => pack(PageEntry, { present: 1, writable: 1, pageSize: 1, addr: ((d * 512 + i) * TWO_MIB) / PAGE })),
    });
  }
  return out;
}
