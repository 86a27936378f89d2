// Puts a fresh vCPU in the state the 64-bit boot protocol expects: CPUID, MSRs, FPU, LAPIC
// LINT pins, long mode with the boot GDT and identity page tables, rip = entry, rsi = zero page.
// Values follow what Firecracker and kvmtool set.

import type { Vcpu } from '../../kvm/kvm';
import { type CpuidEntry, LAPIC_LVT_LINT0, LAPIC_LVT_LINT1 } from '../../kvm/layout';
import { BOOT_STACK_ADDR, GDT_ADDR, IDT_ADDR, PML4_ADDR, ZERO_PAGE_ADDR } from '../layout';
import { normalizeCpuid } from './cpuid';
import { bootGdt } from './gdt';

const CR0_PE = 1n;
const CR0_ET = 1n << 4n;
const CR0_PG = 1n << 31n;
const CR0_NW = 1n << 29n;
const CR0_CD = 1n << 30n;
const CR4_PAE = 1n << 5n;
const EFER_LME = 1n << 8n;
const EFER_LMA = 1n << 10n;

export const MSR = {
  IA32_SYSENTER_CS: 0x174, IA32_SYSENTER_ESP: 0x175, IA32_SYSENTER_EIP: 0x176,
  STAR: 0xc0000081, LSTAR: 0xc0000082, CSTAR: 0xc0000083, SYSCALL_MASK: 0xc0000084,
  KERNEL_GS_BASE: 0xc0000102, IA32_TSC: 0x10, IA32_MISC_ENABLE: 0x1a0, MTRR_DEF_TYPE: 0x2ff,
} as const;

export function bootMsrs(): { index: number; data: bigint }[] {
  return [
    { index: MSR.IA32_SYSENTER_CS, data: 0n },
    { index: MSR.IA32_SYSENTER_ESP, data: 0n },
    { index: MSR.IA32_SYSENTER_EIP, data: 0n },
    { index: MSR.STAR, data: 0n },
    { index: MSR.CSTAR, data: 0n },
    { index: MSR.KERNEL_GS_BASE, data: 0n },
    { index: MSR.SYSCALL_MASK, data: 0n },
    { index: MSR.LSTAR, data: 0n },
    { index: MSR.IA32_TSC, data: 0n },
    { index: MSR.IA32_MISC_ENABLE, data: 1n }, // fast strings
    { index: MSR.MTRR_DEF_TYPE, data: (1n << 11n) | 6n }, // MTRRs on, default write-back
  ];
}

/** LINT0 = ExtINT (the PIC), LINT1 = NMI, as a PC's BIOS leaves them. */
function setLintPins(vcpu: Vcpu): void {
  const lapic = vcpu.getLapic();
  const dv = new DataView(lapic.buffer);
  const mode = (off: number, m: number) => dv.setUint32(off, (dv.getUint32(off, true) & ~0x700) | (m << 8), true);
  mode(LAPIC_LVT_LINT0, 7);
  mode(LAPIC_LVT_LINT1, 4);
  vcpu.setLapic(lapic);
}

export interface CpuSetup {
  supportedCpuid: readonly CpuidEntry[];
  count: number;
  entry: number;
}

export function setupVcpu(vcpu: Vcpu, s: CpuSetup): void {
  vcpu.setCpuid(normalizeCpuid(s.supportedCpuid, vcpu.id, s.count));
  vcpu.setMsrs(bootMsrs());
  vcpu.setFpu(0x37f, 0x1f80);
  setLintPins(vcpu);
  // Application processors wait for INIT/SIPI from the BSP in the in-kernel LAPIC; only the
  // BSP gets boot state.
  if (vcpu.id !== 0) return;
  const gdt = bootGdt();
  const sregs = vcpu.getSregs();
  sregs.cs = gdt.cs;
  for (const n of ['ds', 'es', 'fs', 'gs', 'ss'] as const) sregs[n] = gdt.ds;
  sregs.tr = gdt.tr;
  sregs.gdt = { base: BigInt(GDT_ADDR), limit: gdt.bytes.length - 1 };
  sregs.idt = { base: BigInt(IDT_ADDR), limit: 7 };
  // The reset value has caches disabled (CD|NW); a nested guest runs orders of magnitude
  // slower like that, and Linux expects a firmware to have enabled them.
  sregs.cr0 = (sregs.cr0 & ~(CR0_CD | CR0_NW)) | CR0_PE | CR0_ET | CR0_PG;
  sregs.cr3 = BigInt(PML4_ADDR);
  sregs.cr4 = sregs.cr4 | CR4_PAE;
  sregs.efer = sregs.efer | EFER_LME | EFER_LMA;
  vcpu.setSregs(sregs);
  vcpu.setRegs({
    rflags: 2n,
    rip: BigInt(s.entry),
    rsp: BigInt(BOOT_STACK_ADDR),
    rbp: BigInt(BOOT_STACK_ADDR),
    rsi: BigInt(ZERO_PAGE_ADDR),
  });
}
