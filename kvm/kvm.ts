// The three KVM file descriptors as objects, after rust-vmm's kvm-ioctls: `Kvm` (/dev/kvm),
// `Vm` (KVM_CREATE_VM), `Vcpu` (KVM_CREATE_VCPU). This module owns the ioctl calls and the
// marshalling of their arguments; it must not know about boot, devices or threads.

import * as libc from './libc';
import { KVM, KVM_CAP } from './ioctl';
import {
  type CpuidEntry, KVM_IOEVENTFD_FLAG_DATAMATCH, KVM_IOEVENTFD_FLAG_PIO, KVM_PIT_SPEAKER_DUMMY, KvmCpuid2, KvmCpuidEntry2, KvmEnableCap,
  KvmFpu, KvmIoeventfd, KvmIrqfd, KvmIrqLevel, KvmLapicState, KvmMpState, KvmMsrEntry, KvmMsrs, KvmPitConfig, KvmRegs, KvmSregs,
  KvmNestedState, KvmTranslation, KvmUserspaceMemoryRegion, KvmVcpuEvents, REG_NAMES, type RegName, type SpecialRegs, type ValueOfVcpuEvents,
} from './layout';
import { SysError } from './errors';

export const KVM_API_VERSION = 12;

export class Kvm {
  readonly fd: number;

  constructor(path = '/dev/kvm') {
    this.fd = libc.open(path, libc.O_RDWR);
    const version = libc.ioctlInt(this.fd, KVM.GET_API_VERSION, 0, 'KVM_GET_API_VERSION');
    if (version !== KVM_API_VERSION) {
      libc.close(this.fd);
      throw new Error(`KVM API version ${version} is not supported (need ${KVM_API_VERSION})`);
    }
  }

  checkExtension(cap: number): number {
    return libc.ioctlInt(this.fd, KVM.CHECK_EXTENSION, cap, 'KVM_CHECK_EXTENSION');
  }

  /** The most vCPUs one VM may have (KVM_CAP_MAX_VCPUS, falling back to NR_VCPUS, then 4). */
  maxVcpus(): number {
    return this.checkExtension(KVM_CAP.MAX_VCPUS) || this.checkExtension(KVM_CAP.NR_VCPUS) || 4;
  }

  vcpuMmapSize(): number {
    return libc.ioctlInt(this.fd, KVM.GET_VCPU_MMAP_SIZE, 0, 'KVM_GET_VCPU_MMAP_SIZE');
  }

  supportedCpuid(maxEntries = 256): CpuidEntry[] {
    const buf = new Uint8Array(KvmCpuid2.size + maxEntries * KvmCpuidEntry2.size);
    KvmCpuid2.write(buf, { nent: maxEntries });
    libc.ioctl(this.fd, KVM.GET_SUPPORTED_CPUID, buf, 'KVM_GET_SUPPORTED_CPUID');
    const { nent } = KvmCpuid2.read(buf);
    return Array.from({ length: nent }, (_, i) => KvmCpuidEntry2.read(buf, KvmCpuid2.size + i * KvmCpuidEntry2.size));
  }

  createVm(): Vm {
    return new Vm(this, libc.ioctlInt(this.fd, KVM.CREATE_VM, 0, 'KVM_CREATE_VM'));
  }

  close(): void {
    libc.close(this.fd);
  }
}

export class Vm {
  readonly kvm: Kvm;
  readonly fd: number;

  constructor(kvm: Kvm, fd: number) {
    this.kvm = kvm;
    this.fd = fd;
  }

  setUserMemoryRegion(slot: number, gpa: number, size: number, hostAddr: bigint, flags = 0): void {
    const b = KvmUserspaceMemoryRegion.encode({ slot, flags, guestPhysAddr: BigInt(gpa), memorySize: BigInt(size), userspaceAddr: hostAddr });
    libc.ioctl(this.fd, KVM.SET_USER_MEMORY_REGION, b, 'KVM_SET_USER_MEMORY_REGION');
  }

  setTssAddr(addr: number): void {
    libc.ioctlInt(this.fd, KVM.SET_TSS_ADDR, addr, 'KVM_SET_TSS_ADDR');
  }

  setIdentityMapAddr(addr: number): void {
    const b = new BigUint64Array([BigInt(addr)]);
    libc.ioctl(this.fd, KVM.SET_IDENTITY_MAP_ADDR, b, 'KVM_SET_IDENTITY_MAP_ADDR');
  }

  createIrqchip(): void {
    libc.ioctlInt(this.fd, KVM.CREATE_IRQCHIP, 0, 'KVM_CREATE_IRQCHIP');
  }

  /** The in-kernel PIT; its speaker port (0x61) is emulated as a dummy, as Firecracker does. */
  createPit2(): void {
    const b = KvmPitConfig.encode({ flags: KVM_PIT_SPEAKER_DUMMY });
    libc.ioctl(this.fd, KVM.CREATE_PIT2, b, 'KVM_CREATE_PIT2');
  }

  /**
   * KVM_CAP_HALT_POLL: the longest a halted vCPU of this VM polls for a wake-up before its
   * thread sleeps, in nanoseconds (0: never poll). Overrides the kvm module's halt_poll_ns.
   */
  setHaltPoll(maxNs: number): void {
    if (!Number.isSafeInteger(maxNs) || maxNs < 0 || maxNs > 0xffff_ffff) throw new RangeError(`halt-poll ${maxNs} ns must be 0..4294967295`);
    if (this.kvm.checkExtension(KVM_CAP.HALT_POLL) === 0) throw new SysError('KVM_CHECK_EXTENSION(KVM_CAP_HALT_POLL)', 22, 'this kernel has no per-VM halt polling (Linux >= 5.16)');
    const b = KvmEnableCap.encode({ cap: KVM_CAP.HALT_POLL, arg0: BigInt(maxNs) });
    libc.ioctl(this.fd, KVM.ENABLE_CAP, b, 'KVM_ENABLE_CAP(KVM_CAP_HALT_POLL)');
  }

  irqLine(gsi: number, level: boolean): void {
    const b = KvmIrqLevel.encode({ irq: gsi, level: level ? 1 : 0 });
    libc.ioctl(this.fd, KVM.IRQ_LINE, b, 'KVM_IRQ_LINE');
  }

  /** Routes writes to eventfd `fd` into an edge on `gsi`. */
  registerIrqfd(fd: number, gsi: number): void {
    const b = KvmIrqfd.encode({ fd, gsi });
    libc.ioctl(this.fd, KVM.IRQFD, b, 'KVM_IRQFD');
  }

  /** Makes guest writes of `len` bytes to addr (optionally only of value `datamatch`) signal `fd` without a userspace exit. */
  registerIoeventfd(fd: number, addr: number, len: number, opts: { pio?: boolean; datamatch?: number } = {}): void {
    const flags = (opts.datamatch !== undefined ? KVM_IOEVENTFD_FLAG_DATAMATCH : 0) | (opts.pio ? KVM_IOEVENTFD_FLAG_PIO : 0);
    const b = KvmIoeventfd.encode({ datamatch: BigInt(opts.datamatch ?? 0), addr: BigInt(addr), len, fd, flags });
    libc.ioctl(this.fd, KVM.IOEVENTFD, b, 'KVM_IOEVENTFD');
  }

  createVcpu(id: number): Vcpu {
    return new Vcpu(libc.ioctlInt(this.fd, KVM.CREATE_VCPU, id, 'KVM_CREATE_VCPU'), id);
  }

  close(): void {
    libc.close(this.fd);
  }
}

export type Regs = Record<RegName, bigint>;
export type { SpecialRegs };
export type VcpuEvents = ValueOfVcpuEvents;

/**
 * A vCPU fd. Setup calls (registers, CPUID, MSRs) happen on the main thread before the vCPU
 * starts; the worker thread reopens the same fd number with `Vcpu.fromFd` to run it.
 */
export class Vcpu {
  readonly fd: number;
  readonly id: number;
  private readonly regsBuf = new BigUint64Array(KvmRegs.size / 8);

  constructor(fd: number, id: number) {
    this.fd = fd;
    this.id = id;
  }

  getRegs(): Regs {
    libc.ioctl(this.fd, KVM.GET_REGS, this.regsBuf, 'KVM_GET_REGS');
    const r = {} as Regs;
    REG_NAMES.forEach((n, i) => (r[n] = this.regsBuf[i]!));
    return r;
  }

  setRegs(regs: Partial<Regs>): void {
    this.regsBuf.fill(0n);
    REG_NAMES.forEach((n, i) => (this.regsBuf[i] = regs[n] ?? 0n));
    libc.ioctl(this.fd, KVM.SET_REGS, this.regsBuf, 'KVM_SET_REGS');
  }

  getSregs(): SpecialRegs {
    const b = new Uint8Array(KvmSregs.size);
    libc.ioctl(this.fd, KVM.GET_SREGS, b, 'KVM_GET_SREGS');
    return KvmSregs.read(b);
  }

  setSregs(s: SpecialRegs): void {
    libc.ioctl(this.fd, KVM.SET_SREGS, KvmSregs.encode(s), 'KVM_SET_SREGS');
  }

  setCpuid(entries: readonly CpuidEntry[]): void {
    const b = new Uint8Array(KvmCpuid2.size + entries.length * KvmCpuidEntry2.size);
    KvmCpuid2.write(b, { nent: entries.length });
    entries.forEach((e, i) => KvmCpuidEntry2.write(b, e, KvmCpuid2.size + i * KvmCpuidEntry2.size));
    libc.ioctl(this.fd, KVM.SET_CPUID2, b, 'KVM_SET_CPUID2');
  }

  setMsrs(msrs: readonly { index: number; data: bigint }[]): void {
    const b = new Uint8Array(KvmMsrs.size + msrs.length * KvmMsrEntry.size);
    KvmMsrs.write(b, { nmsrs: msrs.length });
    msrs.forEach((m, i) => KvmMsrEntry.write(b, m, KvmMsrs.size + i * KvmMsrEntry.size));
    const n = libc.ioctl(this.fd, KVM.SET_MSRS, b, 'KVM_SET_MSRS');
    if (n !== msrs.length) {
      throw new SysError('KVM_SET_MSRS', 22, `only ${n} of ${msrs.length} MSRs set; first rejected 0x${msrs[n]!.index.toString(16)}`);
    }
  }

  getLapic(): Uint8Array {
    const b = new Uint8Array(KvmLapicState.size);
    libc.ioctl(this.fd, KVM.GET_LAPIC, b, 'KVM_GET_LAPIC');
    return b;
  }

  /** KVM_MP_STATE_* (MP_STATE_NAMES): runnable, halted, an AP still waiting for SIPI, ... */
  getMpState(): number {
    const b = new Uint8Array(KvmMpState.size);
    libc.ioctl(this.fd, KVM.GET_MP_STATE, b, 'KVM_GET_MP_STATE');
    return KvmMpState.read(b).mpState;
  }

  /**
   * A guest-virtual address through this vCPU's current page tables (KVM_TRANSLATE), or
   * undefined when it is not mapped. Only while the vCPU is out of KVM_RUN.
   */
  translate(gva: bigint): bigint | undefined {
    const b = KvmTranslation.encode({ linearAddress: gva, physicalAddress: 0n, valid: 0 });
    libc.ioctl(this.fd, KVM.TRANSLATE, b, 'KVM_TRANSLATE');
    const t = KvmTranslation.read(b);
    return t.valid ? t.physicalAddress : undefined;
  }

  /** KVM_GET_VCPU_EVENTS: pending/injected exception, interrupt and NMI, the interrupt shadow, SMM. */
  getVcpuEvents(): VcpuEvents {
    const b = new Uint8Array(KvmVcpuEvents.size);
    libc.ioctl(this.fd, KVM.GET_VCPU_EVENTS, b, 'KVM_GET_VCPU_EVENTS');
    return KvmVcpuEvents.read(b);
  }

  /**
   * The header of KVM_GET_NESTED_STATE (format and flags: on AMD whether GIF is set), for a
   * vCPU that runs no nested guest of its own; undefined when KVM has no nested state to give.
   */
  getNestedStateHeader(): { format: number; flags: number } | undefined {
    const b = KvmNestedState.encode({ size: KvmNestedState.size });
    try {
      libc.ioctl(this.fd, KVM.GET_NESTED_STATE, b, 'KVM_GET_NESTED_STATE');
    } catch {
      return undefined; // EINVAL (nested off), E2BIG (the vCPU is in guest mode: more than the header)
    }
    const h = KvmNestedState.read(b);
    return { format: h.format, flags: h.flags };
  }

  /** KVM_GET_STATS_FD: a file of this vCPU's KVM counters (kvm/stats.ts reads it). Not while the vCPU is in KVM_RUN. */
  openStatsFd(): number {
    return libc.ioctlInt(this.fd, KVM.GET_STATS_FD, 0, 'KVM_GET_STATS_FD');
  }

  setLapic(b: Uint8Array): void {
    libc.ioctl(this.fd, KVM.SET_LAPIC, b, 'KVM_SET_LAPIC');
  }

  setFpu(fcw: number, mxcsr: number): void {
    const b = KvmFpu.encode({ fcw, mxcsr });
    libc.ioctl(this.fd, KVM.SET_FPU, b, 'KVM_SET_FPU');
  }

  /** Maps this vCPU's struct kvm_run (shared with the kernel, and between threads). */
  mapRun(mmapSize: number): { addr: bigint; bytes: Uint8Array } {
    const addr = libc.mmap(mmapSize, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, this.fd, 0);
    return { addr, bytes: new Uint8Array(libc.view(addr, mmapSize)) };
  }

  /** KVM_RUN once; returns 0 or -errno (EINTR when kicked). */
  run(): number {
    return libc.ioctlRaw(this.fd, KVM.RUN, null);
  }

  close(): void {
    libc.close(this.fd);
  }
}
