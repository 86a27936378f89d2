// Binary layouts of the KVM ABI structures tsvmm uses (x86-64, <linux/kvm.h>), each described
// once with lib/struct.ts: sizes, field offsets and codecs come from that one description, and
// test/unit/kvm/abi.test.ts checks every struct and field against the system header.
// kvm_run is read on every exit with a DataView at these offsets (vmm/vcpu/worker.ts), not
// decoded into objects: see docs/architecture.md for the measurement.

import { bytes, i32, nested, struct, u16, u32, u64, u8, type Fields, type Struct, type ValueOf } from '../lib/struct';

/**
 * struct kvm_run: the fields before the exit-specific union, then one struct per union member
 * tsvmm reads, at its offset in kvm_run (the whole struct is mmap'd per vCPU and sized by
 * KVM_GET_VCPU_MMAP_SIZE; the sizes here only bound the fields).
 */
export const KvmRun = struct('kvm_run', 32, {
  requestInterruptWindow: u8(0), immediateExit: u8(1), exitReason: u32(8), readyForInterruptInjection: u8(12), ifFlag: u8(13),
});
export const KvmRunIo = struct('kvm_run', 48, {
  direction: u8(32, 'io.direction'), size: u8(33, 'io.size'), port: u16(34, 'io.port'), count: u32(36, 'io.count'),
  dataOffset: u64(40, 'io.data_offset'),
});
export const KvmRunMmio = struct('kvm_run', 56, {
  physAddr: u64(32, 'mmio.phys_addr'), data: bytes(40, 8, 'mmio.data'), len: u32(48, 'mmio.len'), isWrite: u8(52, 'mmio.is_write'),
});
export const KvmRunSystemEvent = struct('kvm_run', 168, {
  type: u32(32, 'system_event.type'), ndata: u32(36, 'system_event.ndata'), data: bytes(40, 128, 'system_event.data'),
});
export const KvmRunInternal = struct('kvm_run', 168, {
  suberror: u32(32, 'internal.suberror'), ndata: u32(36, 'internal.ndata'), data: bytes(40, 128, 'internal.data'),
});
export const KvmRunFailEntry = struct('kvm_run', 44, {
  hardwareEntryFailureReason: u64(32, 'fail_entry.hardware_entry_failure_reason'), cpu: u32(40, 'fail_entry.cpu'),
});

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

/**
 * struct kvm_regs: 18 u64 in this order. Kvm's getRegs/setRegs move them through one
 * BigUint64Array (no per-field decode); the struct is their offsets, checked against the header.
 */
export const REG_NAMES = [
  'rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp',
  'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags',
] as const;
export type RegName = (typeof REG_NAMES)[number];
export const KvmRegs = struct('kvm_regs', 8 * REG_NAMES.length, Object.fromEntries(REG_NAMES.map((n, i) => [n, u64(8 * i)])) as Record<RegName, ReturnType<typeof u64>>);

export const KvmSegment = struct('kvm_segment', 24, {
  base: u64(0), limit: u32(8), selector: u16(12), type: u8(14), present: u8(15), dpl: u8(16),
  db: u8(17), s: u8(18), l: u8(19), g: u8(20), avl: u8(21), unusable: u8(22),
});
export type Segment = ValueOf<typeof KvmSegment>;
export const KvmDtable = struct('kvm_dtable', 16, { base: u64(0), limit: u16(8) });

/** struct kvm_sregs: 8 segments, gdt, idt, control registers, efer, apic_base, interrupt bitmap. */
export const KvmSregs = struct('kvm_sregs', 312, {
  cs: nested(0, KvmSegment), ds: nested(24, KvmSegment), es: nested(48, KvmSegment), fs: nested(72, KvmSegment),
  gs: nested(96, KvmSegment), ss: nested(120, KvmSegment), tr: nested(144, KvmSegment), ldt: nested(168, KvmSegment),
  gdt: nested(192, KvmDtable), idt: nested(208, KvmDtable),
  cr0: u64(224), cr2: u64(232), cr3: u64(240), cr4: u64(248), cr8: u64(256), efer: u64(264), apicBase: u64(272),
  interruptBitmap: bytes(280, 32),
});
export type SpecialRegs = ValueOf<typeof KvmSregs>;

export const KvmUserspaceMemoryRegion = struct('kvm_userspace_memory_region', 32, {
  slot: u32(0), flags: u32(4), guestPhysAddr: u64(8), memorySize: u64(16), userspaceAddr: u64(24),
});

/** struct kvm_cpuid2 header; `nent` struct kvm_cpuid_entry2 follow it. */
export const KvmCpuid2 = struct('kvm_cpuid2', 8, { nent: u32(0) });
export const KvmCpuidEntry2 = struct('kvm_cpuid_entry2', 40, {
  function: u32(0), index: u32(4), flags: u32(8), eax: u32(12), ebx: u32(16), ecx: u32(20), edx: u32(24),
});
export type CpuidEntry = ValueOf<typeof KvmCpuidEntry2>;
export const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1;

/** struct kvm_msrs header; `nmsrs` struct kvm_msr_entry follow it. */
export const KvmMsrs = struct('kvm_msrs', 8, { nmsrs: u32(0) });
export const KvmMsrEntry = struct('kvm_msr_entry', 16, { index: u32(0), data: u64(8) });

export const KvmPitConfig = struct('kvm_pit_config', 64, { flags: u32(0) });
export const KVM_PIT_SPEAKER_DUMMY = 1;

export const KvmIrqfd = struct('kvm_irqfd', 32, { fd: u32(0), gsi: u32(4), flags: u32(8) });
export const KvmIrqLevel = struct('kvm_irq_level', 8, { irq: u32(0), level: u32(4) });
/** struct kvm_enable_cap: the capability and its first argument (the others and the pad stay 0). */
export const KvmEnableCap = struct('kvm_enable_cap', 104, { cap: u32(0), flags: u32(4), arg0: u64(8, 'args[0]') });

export const KvmIoeventfd = struct('kvm_ioeventfd', 64, { datamatch: u64(0), addr: u64(8), len: u32(16), fd: i32(20), flags: u32(24) });
export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0;
export const KVM_IOEVENTFD_FLAG_PIO = 1 << 1;

/** struct kvm_lapic_state: the 1 KiB register page, handed around as bytes. */
export const KvmLapicState = struct('kvm_lapic_state', 1024, { regs: bytes(0, 1024) });
/** Local APIC register offsets inside that page (Intel SDM vol. 3, 11.4.1): LVT LINT0/LINT1. */
export const LAPIC_LVT_LINT0 = 0x350;
export const LAPIC_LVT_LINT1 = 0x360;

/** struct kvm_mp_state: a vCPU's run state (KVM_MP_STATE_*), read when diagnosing a hung guest. */
export const KvmMpState = struct('kvm_mp_state', 4, { mpState: u32(0, 'mp_state') });
/** KVM_MP_STATE_* by value. */
export const MP_STATE_NAMES = ['runnable', 'uninitialized (an AP waiting for INIT/SIPI)', 'INIT received', 'halted', 'SIPI received', 'stopped', 'check stop', 'operating', 'load'] as const;

/** struct kvm_translation: a guest-virtual address through the vCPU's current page tables (diagnosis only). */
export const KvmTranslation = struct('kvm_translation', 24, {
  linearAddress: u64(0, 'linear_address'), physicalAddress: u64(8, 'physical_address'), valid: u8(16),
});

/** struct kvm_fpu: only the control words tsvmm sets. */
export const KvmFpu = struct('kvm_fpu', 416, { fcw: u16(128), mxcsr: u32(408) });

/**
 * struct kvm_vcpu_events: what KVM has pending or in flight for a vCPU besides its LAPIC — an
 * exception, an interrupt being injected, the interrupt shadow (STI / MOV SS: no interrupt
 * before the next instruction), NMI and SMM state. Read when diagnosing a vCPU that takes no
 * interrupts.
 */
export const KvmVcpuEvents = struct('kvm_vcpu_events', 64, {
  exceptionInjected: u8(0, 'exception.injected'), exceptionNr: u8(1, 'exception.nr'), exceptionHasErrorCode: u8(2, 'exception.has_error_code'),
  exceptionPending: u8(3, 'exception.pending'), exceptionErrorCode: u32(4, 'exception.error_code'),
  interruptInjected: u8(8, 'interrupt.injected'), interruptNr: u8(9, 'interrupt.nr'), interruptSoft: u8(10, 'interrupt.soft'), interruptShadow: u8(11, 'interrupt.shadow'),
  nmiInjected: u8(12, 'nmi.injected'), nmiPending: u8(13, 'nmi.pending'), nmiMasked: u8(14, 'nmi.masked'),
  sipiVector: u32(16), flags: u32(20),
  smiSmm: u8(24, 'smi.smm'), smiPending: u8(25, 'smi.pending'), smiInsideNmi: u8(26, 'smi.smm_inside_nmi'), smiLatchedInit: u8(27, 'smi.latched_init'),
});
export type ValueOfVcpuEvents = ValueOf<typeof KvmVcpuEvents>;
export const KVM_X86_SHADOW_INT_MOV_SS = 0x01;
export const KVM_X86_SHADOW_INT_STI = 0x02;

/**
 * struct kvm_nested_state, its header only: for a vCPU not running a nested guest of its own,
 * that is all KVM_GET_NESTED_STATE returns. On AMD its flags say whether the vCPU's global
 * interrupt flag (GIF) is set: with GIF clear KVM injects no interrupt at all.
 */
export const KvmNestedState = struct('kvm_nested_state', 128, { flags: u16(0), format: u16(2), size: u32(4) });
export const KVM_STATE_NESTED_FORMAT_SVM = 1;
export const KVM_STATE_NESTED_GIF_SET = 0x100;

/** KVM's binary statistics (KVM_GET_STATS_FD, Documentation/virt/kvm/api.rst 4.133): the file's header and each descriptor's fixed part (its name follows it). */
export const KvmStatsHeader = struct('kvm_stats_header', 24, {
  flags: u32(0), nameSize: u32(4), numDesc: u32(8), idOffset: u32(12), descOffset: u32(16), dataOffset: u32(20),
});
export const KvmStatsDesc = struct('kvm_stats_desc', 16, { flags: u32(0), exponent: u16(4), size: u16(6), offset: u32(8), bucketSize: u32(12) });
export const KVM_STATS_TYPE_MASK = 0xf;
export const KVM_STATS_TYPE_CUMULATIVE = 0;

/** Every struct above, for the ABI test. */
export const KVM_STRUCTS: readonly Struct<Fields>[] = [
  KvmRun, KvmRunIo, KvmRunMmio, KvmRunSystemEvent, KvmRunInternal, KvmRunFailEntry, KvmRegs, KvmSegment, KvmDtable,
  KvmSregs, KvmUserspaceMemoryRegion, KvmCpuid2, KvmCpuidEntry2, KvmMsrs, KvmMsrEntry, KvmPitConfig, KvmIrqfd,
  KvmIrqLevel, KvmEnableCap, KvmIoeventfd, KvmLapicState, KvmFpu, KvmMpState, KvmTranslation, KvmVcpuEvents, KvmNestedState,
  KvmStatsHeader, KvmStatsDesc,
];
