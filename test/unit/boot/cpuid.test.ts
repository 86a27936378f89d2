// Per-vCPU CPUID (vmm/boot/cpuid.ts) over a synthetic KVM_GET_SUPPORTED_CPUID list.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { CpuidEntry } from '../../../kvm/layout';
import { normalizeCpuid } from '../../../vmm/boot/cpuid';

const e = (fn: number, index: number, eax: number, ebx: number, ecx: number, edx: number, flags = 0): CpuidEntry =>
  ({ function: fn, index, flags, eax, ebx, ecx, edx });

/** Host-like values: leaf 1 EBX has brand index 0x05 and CLFLUSH size 0x08 in [15:0]. */
function supported(): CpuidEntry[] {
  return [
    e(0x0, 0, 0x1f, 0x756e6547, 0x6c65746e, 0x49656e69),
    e(0x1, 0, 0x000906ea, 0xff100805, 0x7ffafbbf, 0x0fabfbff & ~(1 << 28)),
    e(0x4, 0, 0x1c004121, 0x01c0003f, 0x3f, 0, 1),
    e(0x4, 3, 0, 0, 0, 0, 1), // the "no more caches" terminator: type 0
    e(0xb, 0, 0x1, 0x2, 0x100, 0x7, 1),
    e(0xb, 1, 0x4, 0x10, 0x201, 0x7, 1),
    e(0xb, 2, 0, 0, 0x2, 0x7, 1),
    e(0x1f, 0, 0x1, 0x2, 0x100, 0x7, 1),
    e(0x1f, 1, 0x4, 0x10, 0x201, 0x7, 1),
    e(0x80000001, 0, 0, 0, 0x121, 0x2c100800),
    e(0x80000008, 0, 0x3030, 0, 0x700f, 0),
    e(0x8000001e, 0, 0x11, 0x100, 0x300, 0),
  ];
}
const find = (l: CpuidEntry[], fn: number, index = 0) => {
  const x = l.find((y) => y.function === fn && y.index === index);
  if (!x) throw new Error(`no leaf 0x${fn.toString(16)}.${index}`);
  return x;
};

test('leaf 1 for vCPU 2 of 4: APIC id, logical count, HTT, hypervisor bit; low EBX kept', () => {
  const l1 = find(normalizeCpuid(supported(), 2, 4), 0x1);
  assert.is(l1.ebx >>> 24, 2, 'initial APIC id');
  assert.is((l1.ebx >>> 16) & 0xff, 4, 'logical processors');
  assert.is(l1.ebx & 0xffff, 0x0805, 'CLFLUSH size and brand index kept');
  assert.is(l1.ecx >>> 31, 1, 'hypervisor');
  assert.is((l1.edx >>> 28) & 1, 1, 'HTT');
  assert.is(l1.eax, 0x000906ea, 'signature untouched');
});

test('leaf 0xb / 0x1f for vCPU 2 of 4: x2APIC id, SMT then core level', () => {
  const out = normalizeCpuid(supported(), 2, 4);
  for (const fn of [0xb, 0x1f]) {
    const s0 = find(out, fn, 0);
    const s1 = find(out, fn, 1);
    assert.is(s0.edx, 2, 'x2APIC id');
    assert.is(s1.edx, 2);
    assert.is(s0.ebx, 1, 'one thread per core');
    assert.is((s0.ecx >> 8) & 0xff, 1, 'level type SMT');
    assert.is(s1.ebx, 4, 'four logical processors at core level');
    assert.is((s1.ecx >> 8) & 0xff, 2, 'level type core');
    assert.is(s1.ecx & 0xff, 1, 'level number echoes the sub-leaf');
    assert.is(s1.eax & 0x1f, 2, 'shift to the package id: 2 bits for 4 cores');
    assert.ok(s0.flags & 1, 'significant index');
  }
  const s2 = find(out, 0xb, 2);
  assert.is(s2.ebx, 0, 'sub-leaf 2 is invalid');
  assert.is((s2.ecx >> 8) & 0xff, 0);
  assert.is(s2.ecx & 0xff, 2);
});

test('AMD leaves for vCPU 2 of 4: 0x80000008 NC = 3, 0x8000001e ext APIC id, CmpLegacy', () => {
  const out = normalizeCpuid(supported(), 2, 4);
  const l88 = find(out, 0x80000008);
  assert.is(l88.ecx & 0xff, 3, 'NC = cores - 1');
  assert.is((l88.ecx >> 12) & 0xf, 2, 'ApicIdSize');
  assert.is(l88.eax, 0x3030, 'address sizes untouched');
  assert.is(find(out, 0x8000001e).eax, 2);
  assert.is(find(out, 0x80000001).ecx & 2, 2);
});

test('leaf 4 cores-per-package field set, terminator untouched', () => {
  const out = normalizeCpuid(supported(), 0, 4);
  assert.is(find(out, 0x4, 0).eax >>> 26, 3);
  assert.is(find(out, 0x4, 0).eax & 0x3fff, 0x0121);
  assert.is(find(out, 0x4, 3).eax, 0);
});

test('one vCPU: HTT and CmpLegacy cleared, count 1, id 0', () => {
  const src = supported();
  find(src, 0x1).edx |= 1 << 28;
  const out = normalizeCpuid(src, 0, 1);
  const l1 = find(out, 0x1);
  assert.is((l1.edx >>> 28) & 1, 0, 'HTT cleared');
  assert.is(l1.ebx >>> 24, 0);
  assert.is((l1.ebx >>> 16) & 0xff, 1);
  assert.is(find(out, 0xb, 1).ebx, 1);
  assert.is(find(out, 0xb, 1).eax & 0x1f, 0);
  assert.is(find(out, 0x80000001).ecx & 2, 0);
  assert.is(find(out, 0x80000008).ecx & 0xff, 0);
});

test('the input list is not mutated; unknown leaves pass through; every value is a u32', () => {
  const src = supported();
  const copy = JSON.parse(JSON.stringify(src)) as CpuidEntry[];
  const out = normalizeCpuid(src, 3, 4);
  assert.equal(src, copy);
  assert.is(out.length, src.length);
  assert.equal(find(out, 0x0), find(src, 0x0));
  for (const x of out) for (const r of [x.eax, x.ebx, x.ecx, x.edx]) assert.ok(Number.isInteger(r) && r >= 0 && r <= 0xffffffff, `${r}`);
});

test.run();
