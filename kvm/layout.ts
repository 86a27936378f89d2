// Binary layouts of the KVM ABI structures tsvmm uses (x86-64, <linux/kvm.h>): sizes and field
// offsets in one place. Everything that reads or writes these structs goes through the
// constants or the small codecs here; test/unit/kvm checks them against the system header.

/** struct kvm_run: the fields tsvmm reads on every exit (the struct is mmap'd per vCPU). */
export const KvmRun = {
  requestInterruptWindow: 0,
  immediateExit: 1,
  exitReason: 8,
  readyForInterruptInjection: 12,
  ifFlag: 13,
  /** The exit-specific union. */
  union: 32,
  io: { direction: 32, size: 33, port: 34, count: 36, dataOffset: 40 },
  mmio: { physAddr: 32, data: 40, len: 48, isWrite: 52 },
  systemEvent: { type: 32, ndata: 36, data: 40 },
  internal: { suberror: 32, ndata: 36, data: 40 },
  failEntry: { hardwareEntryFailureReason: 32, cpu: 40 },
} as const;

export const ExitReason = {
  UNKNOWN: 0, EXCEPTION: 1, IO: 2, HYPERCALL: 3, DEBUG: 4, HLT: 5, MMIO: 6, IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8, FAIL_ENTRY: 9, INTR: 10, SET_TPR: 11, TPR_ACCESS: 12, NMI: 16, INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
} as const;

export const exitReasonName = (r: number): string =>
  Object.entries(ExitReason).find(([, v]) => v === r)?.[0] ?? `exit ${r}`;

export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;
export const KVM_SYSTEM_EVENT_SHUTDOWN = 1;
export const KVM_SYSTEM_EVENT_RESET = 2;
export const KVM_SYSTEM_EVENT_CRASH = 3;

/** struct kvm_regs: 18 u64 in this order. */
export const REG_NAMES = [
  'rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp',
  'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags',
] as const;
export type RegName = (typeof REG_NAMES)[number];
export const SIZEOF_KVM_REGS = 144;

/** struct kvm_segment (24 bytes). */
export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}
export const SIZEOF_KVM_SEGMENT = 24;
export const SIZEOF_KVM_DTABLE = 16;

/** struct kvm_sregs: 8 segments, gdt, idt, control registers, efer, apic_base, interrupt bitmap. */
export const Sregs = {
  size: 312,
  segments: ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const,
  gdt: 192,
  idt: 208,
  cr0: 224, cr2: 232, cr3: 240, cr4: 248, cr8: 256, efer: 264, apicBase: 272,
  interruptBitmap: 280,
} as const;
export type SegmentName = (typeof Sregs.segments)[number];

export function readSegment(dv: DataView, off: number): Segment {
  return {
    base: dv.getBigUint64(off, true),
    limit: dv.getUint32(off + 8, true),
    selector: dv.getUint16(off + 12, true),
    type: dv.getUint8(off + 14), present: dv.getUint8(off + 15), dpl: dv.getUint8(off + 16),
    db: dv.getUint8(off + 17), s: dv.getUint8(off + 18), l: dv.getUint8(off + 19),
    g: dv.getUint8(off + 20), avl: dv.getUint8(off + 21), unusable: dv.getUint8(off + 22),
  };
}

export function writeSegment(dv: DataView, off: number, s: Segment): void {
  dv.setBigUint64(off, s.base, true);
  dv.setUint32(off + 8, s.limit, true);
  dv.setUint16(off + 12, s.selector, true);
  dv.setUint8(off + 14, s.type); dv.setUint8(off + 15, s.present); dv.setUint8(off + 16, s.dpl);
  dv.setUint8(off + 17, s.db); dv.setUint8(off + 18, s.s); dv.setUint8(off + 19, s.l);
  dv.setUint8(off + 20, s.g); dv.setUint8(off + 21, s.avl); dv.setUint8(off + 22, s.unusable);
}

/** struct kvm_userspace_memory_region. */
export const MemRegion = { size: 32, slot: 0, flags: 4, guestPhysAddr: 8, memorySize: 16, userspaceAddr: 24 } as const;

/** struct kvm_cpuid2 header + struct kvm_cpuid_entry2. */
export const Cpuid2 = { header: 8, nent: 0 } as const;
export const CpuidEntry = { size: 40, function: 0, index: 4, flags: 8, eax: 12, ebx: 16, ecx: 20, edx: 24 } as const;
export const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1;

/** struct kvm_msrs header + struct kvm_msr_entry. */
export const Msrs = { header: 8, nmsrs: 0 } as const;
export const MsrEntry = { size: 16, index: 0, data: 8 } as const;

export const PitConfig = { size: 64, flags: 0 } as const;
export const KVM_PIT_SPEAKER_DUMMY = 1;

export const Irqfd = { size: 32, fd: 0, gsi: 4, flags: 8 } as const;
export const IrqLevel = { size: 8, irq: 0, level: 4 } as const;
/** struct kvm_enable_cap: u32 cap, u32 flags, u64 args[4], u8 pad[64]. */
export const EnableCap = { size: 104, cap: 0, flags: 4, args: 8 } as const;

export const Ioeventfd = { size: 64, datamatch: 0, addr: 8, len: 16, fd: 20, flags: 24 } as const;
export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0;
export const KVM_IOEVENTFD_FLAG_PIO = 1 << 1;

/** struct kvm_lapic_state: the 1 KiB register page. LVT LINT0/LINT1 at 0x350/0x360. */
export const Lapic = { size: 1024, lvtLint0: 0x350, lvtLint1: 0x360 } as const;

/** struct kvm_fpu. */
export const Fpu = { size: 416, fcw: 128, mxcsr: 408 } as const;
