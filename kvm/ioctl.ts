// KVM ioctl request numbers, computed like the kernel's _IO/_IOR/_IOW/_IOWR macros from
// direction, type (0xAE), number and argument size — no numbers pasted from headers.
// test/unit/kvm checks every one against <linux/kvm.h>.

import {
  KvmCpuid2, KvmEnableCap, KvmFpu, KvmIoeventfd, KvmIrqfd, KvmIrqLevel, KvmLapicState, KvmMpState, KvmMsrs, KvmPitConfig, KvmRegs, KvmSregs,
  KvmNestedState, KvmTranslation, KvmUserspaceMemoryRegion, KvmVcpuEvents,
} from './layout';

const NONE = 0;
const WRITE = 1;
const READ = 2;

/** _IOC(dir, type, nr, size) as an unsigned 32-bit number (>>> 0: never sign-extended). */
export function ioc(dir: number, type: number, nr: number, size: number): number {
  return ((dir << 30) | (size << 16) | (type << 8) | nr) >>> 0;
}
const KVMIO = 0xae;
const io = (nr: number) => ioc(NONE, KVMIO, nr, 0);
const ior = (nr: number, size: number) => ioc(READ, KVMIO, nr, size);
const iow = (nr: number, size: number) => ioc(WRITE, KVMIO, nr, size);
const iowr = (nr: number, size: number) => ioc(READ | WRITE, KVMIO, nr, size);

export const KVM = {
  GET_API_VERSION: io(0x00),
  CREATE_VM: io(0x01),
  CHECK_EXTENSION: io(0x03),
  GET_VCPU_MMAP_SIZE: io(0x04),
  GET_SUPPORTED_CPUID: iowr(0x05, KvmCpuid2.size),
  CREATE_VCPU: io(0x41),
  SET_USER_MEMORY_REGION: iow(0x46, KvmUserspaceMemoryRegion.size),
  SET_TSS_ADDR: io(0x47),
  SET_IDENTITY_MAP_ADDR: iow(0x48, 8),
  CREATE_IRQCHIP: io(0x60),
  IRQ_LINE: iow(0x61, KvmIrqLevel.size),
  IRQFD: iow(0x76, KvmIrqfd.size),
  CREATE_PIT2: iow(0x77, KvmPitConfig.size),
  IOEVENTFD: iow(0x79, KvmIoeventfd.size),
  ENABLE_CAP: iow(0xa3, KvmEnableCap.size),
  RUN: io(0x80),
  GET_REGS: ior(0x81, KvmRegs.size),
  SET_REGS: iow(0x82, KvmRegs.size),
  GET_SREGS: ior(0x83, KvmSregs.size),
  SET_SREGS: iow(0x84, KvmSregs.size),
  TRANSLATE: iowr(0x85, KvmTranslation.size),
  SET_MSRS: iow(0x89, KvmMsrs.size),
  GET_FPU: ior(0x8c, KvmFpu.size),
  SET_FPU: iow(0x8d, KvmFpu.size),
  GET_LAPIC: ior(0x8e, KvmLapicState.size),
  SET_LAPIC: iow(0x8f, KvmLapicState.size),
  SET_CPUID2: iow(0x90, KvmCpuid2.size),
  GET_MP_STATE: ior(0x98, KvmMpState.size),
  GET_VCPU_EVENTS: ior(0x9f, KvmVcpuEvents.size),
  GET_NESTED_STATE: iowr(0xbe, KvmNestedState.size),
  GET_STATS_FD: io(0xce),
} as const;

/** KVM_CHECK_EXTENSION capability numbers. */
export const KVM_CAP = {
  IRQCHIP: 0,
  HLT: 1,
  USER_MEMORY: 3,
  SET_TSS_ADDR: 4,
  EXT_CPUID: 7,
  NR_VCPUS: 9,
  NR_MEMSLOTS: 10,
  PIT2: 33,
  IRQFD: 32,
  IOEVENTFD: 36,
  MAX_VCPUS: 66,
  IMMEDIATE_EXIT: 136,
  HALT_POLL: 182,
} as const;
