// Per-vCPU CPUID, derived from KVM_GET_SUPPORTED_CPUID: each vCPU gets its own APIC id and a
// topology of `count` single-thread cores in one package, and the hypervisor bit is set.
// Pure functions over entry lists, so tests need no KVM.

import { type CpuidEntry, KVM_CPUID_FLAG_SIGNIFCANT_INDEX } from '../../kvm/layout';

const ECX_HYPERVISOR = 1 << 31;
const EDX_HTT = 1 << 28;
const ECX_CMP_LEGACY = 1 << 1; // 0x80000001: AMD "core multi-processing legacy mode"
const LEVEL_SMT = 1;
const LEVEL_CORE = 2;

const bitsFor = (n: number) => (n <= 1 ? 0 : 32 - Math.clz32(n - 1));

export function normalizeCpuid(supported: readonly CpuidEntry[], vcpu: number, count: number): CpuidEntry[] {
  const coreBits = bitsFor(count);
  const out: CpuidEntry[] = [];
  for (const src of supported) {
    const e = { ...src };
    switch (e.function) {
      case 0x1:
        // EBX[31:24] initial APIC id, [23:16] logical processors per package.
        e.ebx = ((e.ebx & 0x0000ffff) | (Math.min(count, 255) << 16) | ((vcpu & 0xff) << 24)) >>> 0;
        e.ecx = (e.ecx | ECX_HYPERVISOR) >>> 0;
        e.edx = count > 1 ? (e.edx | EDX_HTT) >>> 0 : (e.edx & ~EDX_HTT) >>> 0;
        break;
      case 0x4:
        // Intel deterministic cache parameters: EAX[31:26] = cores per package - 1, [25:14] = threads sharing - 1.
        if ((e.eax & 0x1f) !== 0) e.eax = ((e.eax & 0x3fff) | ((count - 1) << 26)) >>> 0;
        break;
      case 0xb:
      case 0x1f:
        topologyLeaf(e, vcpu, count, coreBits);
        break;
      case 0x80000001:
        e.ecx = count > 1 ? (e.ecx | ECX_CMP_LEGACY) >>> 0 : (e.ecx & ~ECX_CMP_LEGACY) >>> 0;
        break;
      case 0x80000008:
        // AMD: ECX[7:0] = cores - 1, ECX[15:12] = APIC id bits for the core id.
        e.ecx = ((e.ecx & ~0xf0ff) | ((count - 1) & 0xff) | (coreBits << 12)) >>> 0;
        break;
      case 0x8000001e:
        // AMD: extended APIC id, one thread per compute unit, one node.
        e.eax = vcpu >>> 0;
        e.ebx = vcpu & 0xff;
        e.ecx = 0;
        break;
    }
    out.push(e);
  }
  return out;
}

/** Extended topology: sub-leaf 0 = SMT (1 thread), 1 = cores (count), the rest invalid. */
function topologyLeaf(e: CpuidEntry, vcpu: number, count: number, coreBits: number): void {
  e.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
  e.edx = vcpu >>> 0;
  if (e.index === 0) {
    e.eax = 0;
    e.ebx = 1;
    e.ecx = (LEVEL_SMT << 8) | 0;
  } else if (e.index === 1) {
    e.eax = coreBits;
    e.ebx = count;
    e.ecx = (LEVEL_CORE << 8) | 1;
  } else {
    e.eax = 0;
    e.ebx = 0;
    e.ecx = e.index & 0xff;
  }
}
