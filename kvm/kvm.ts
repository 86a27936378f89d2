// The three KVM file descriptors as objects, after rust-vmm's kvm-ioctls: `Kvm` (/dev/kvm),
// `Vm` (KVM_CREATE_VM), `Vcpu` (KVM_CREATE_VCPU). This module owns the ioctl calls and the
// marshalling of their arguments; it must not know about boot, devices or threads.

import * as libc from './libc';
import { KVM, KVM_CAP } from './ioctl';
import {
  Cpuid2, CpuidEntry, EnableCap, Fpu, Ioeventfd, Irqfd, IrqLevel, KVM_IOEVENTFD_FLAG_DATAMATCH, KVM_IOEVENTFD_FLAG_PIO,
  KVM_PIT_SPEAKER_DUMMY, KvmRun, Lapic, MemRegion, MsrEntry, Msrs, PitConfig, REG_NAMES, RegName,
  SIZEOF_KVM_REGS, Segment, SegmentName, Sregs, readSegment, writeSegment,
} from './layout';
import { SysError } from './errors';

export const KVM_API_VERSION = 12;

export interface CpuidEntryValue {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

const CPUID_FIELDS = ['function', 'index', 'flags', 'eax', 'ebx', 'ecx', 'edx'] as const;

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

  supportedCpuid(maxEntries = 256): CpuidEntryValue[] {
    const buf = new Uint8Array(Cpuid2.header + maxEntries * CpuidEntry.size);
    const dv = new DataView(buf.buffer);
    dv.setUint32(Cpuid2.nent, maxEntries, true);
    libc.ioctl(this.fd, KVM.GET_SUPPORTED_CPUID, buf, 'KVM_GET_SUPPORTED_CPUID');
    const n = dv.getUint32(Cpuid2.nent, true);
    const out: CpuidEntryValue[] = [];
    for (let i = 0; i < n; i++) {
      const o = Cpuid2.header + i * CpuidEntry.size;
      const e = {} as CpuidEntryValue;
      for (const f of CPUID_FIELDS) e[f] = dv.getUint32(o + CpuidEntry[f], true);
      out.push(e);
    }
    return out;
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
    const b = new Uint8Array(MemRegion.size);
    const dv = new DataView(b.buffer);
    dv.setUint32(MemRegion.slot, slot, true);
    dv.setUint32(MemRegion.flags, flags, true);
    dv.setBigUint64(MemRegion.guestPhysAddr, BigInt(gpa), true);
    dv.setBigUint64(MemRegion.memorySize, BigInt(size), true);
    dv.setBigUint64(MemRegion.userspaceAddr, hostAddr, true);
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
    const b = new Uint8Array(PitConfig.size);
    new DataView(b.buffer).setUint32(PitConfig.flags, KVM_PIT_SPEAKER_DUMMY, true);
    libc.ioctl(this.fd, KVM.CREATE_PIT2, b, 'KVM_CREATE_PIT2');
  }

  /**
   * KVM_CAP_HALT_POLL: the longest a halted vCPU of this VM polls for a wake-up before its
   * thread sleeps, in nanoseconds (0: never poll). Overrides the kvm module's halt_poll_ns.
   */
  setHaltPoll(maxNs: number): void {
    if (!Number.isSafeInteger(maxNs) || maxNs < 0 || maxNs > 0xffff_ffff) throw new RangeError(`halt-poll ${maxNs} ns must be 0..4294967295`);
    if (this.kvm.checkExtension(KVM_CAP.HALT_POLL) === 0) throw new SysError('KVM_CHECK_EXTENSION(KVM_CAP_HALT_POLL)', 22, 'this kernel has no per-VM halt polling (Linux >= 5.16)');
    const b = new Uint8Array(EnableCap.size);
    const dv = new DataView(b.buffer);
    dv.setUint32(EnableCap.cap, KVM_CAP.HALT_POLL, true);
    dv.setBigUint64(EnableCap.args, BigInt(maxNs), true);
    libc.ioctl(this.fd, KVM.ENABLE_CAP, b, 'KVM_ENABLE_CAP(KVM_CAP_HALT_POLL)');
  }

  irqLine(gsi: number, level: boolean): void {
    const b = new Uint32Array(IrqLevel.size / 4);
    b[0] = gsi;
    b[1] = level ? 1 : 0;
    libc.ioctl(this.fd, KVM.IRQ_LINE, b, 'KVM_IRQ_LINE');
  }

  /** Routes writes to eventfd `fd` into an edge on `gsi`. */
  registerIrqfd(fd: number, gsi: number): void {
    const b = new Uint8Array(Irqfd.size);
    const dv = new DataView(b.buffer);
    dv.setUint32(Irqfd.fd, fd, true);
    dv.setUint32(Irqfd.gsi, gsi, true);
    libc.ioctl(this.fd, KVM.IRQFD, b, 'KVM_IRQFD');
  }

  /** Makes guest writes of `len` bytes to addr (optionally only of value `datamatch`) signal `fd` without a userspace exit. */
  registerIoeventfd(fd: number, addr: number, len: number, opts: { pio?: boolean; datamatch?: number } = {}): void {
    const b = new Uint8Array(Ioeventfd.size);
    const dv = new DataView(b.buffer);
    let flags = 0;
    if (opts.datamatch !== undefined) {
      flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
      dv.setBigUint64(Ioeventfd.datamatch, BigInt(opts.datamatch), true);
    }
    if (opts.pio) flags |= KVM_IOEVENTFD_FLAG_PIO;
    dv.setBigUint64(Ioeventfd.addr, BigInt(addr), true);
    dv.setUint32(Ioeventfd.len, len, true);
    dv.setInt32(Ioeventfd.fd, fd, true);
    dv.setUint32(Ioeventfd.flags, flags, true);
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

export interface SpecialRegs {
  segments: Record<SegmentName, Segment>;
  gdt: { base: bigint; limit: number };
  idt: { base: bigint; limit: number };
  cr0: bigint; cr2: bigint; cr3: bigint; cr4: bigint; cr8: bigint; efer: bigint; apicBase: bigint;
}

/**
 * A vCPU fd. Setup calls (registers, CPUID, MSRs) happen on the main thread before the vCPU
 * starts; the worker thread reopens the same fd number with `Vcpu.fromFd` to run it.
 */
export class Vcpu {
  readonly fd: number;
  readonly id: number;
  private readonly regsBuf = new BigUint64Array(SIZEOF_KVM_REGS / 8);

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
    const b = new Uint8Array(Sregs.size);
    libc.ioctl(this.fd, KVM.GET_SREGS, b, 'KVM_GET_SREGS');
    const dv = new DataView(b.buffer);
    const segments = {} as Record<SegmentName, Segment>;
    Sregs.segments.forEach((n, i) => (segments[n] = readSegment(dv, i * 24)));
    const dt = (o: number) => ({ base: dv.getBigUint64(o, true), limit: dv.getUint16(o + 8, true) });
    const q = (o: number) => dv.getBigUint64(o, true);
    return {
      segments, gdt: dt(Sregs.gdt), idt: dt(Sregs.idt),
      cr0: q(Sregs.cr0), cr2: q(Sregs.cr2), cr3: q(Sregs.cr3), cr4: q(Sregs.cr4), cr8: q(Sregs.cr8),
      efer: q(Sregs.efer), apicBase: q(Sregs.apicBase),
    };
  }

  setSregs(s: SpecialRegs): void {
    const b = new Uint8Array(Sregs.size);
    const dv = new DataView(b.buffer);
    Sregs.segments.forEach((n, i) => writeSegment(dv, i * 24, s.segments[n]));
    const dt = (o: number, t: { base: bigint; limit: number }) => {
      dv.setBigUint64(o, t.base, true);
      dv.setUint16(o + 8, t.limit, true);
    };
    dt(Sregs.gdt, s.gdt);
    dt(Sregs.idt, s.idt);
    const q = (o: number, v: bigint) => dv.setBigUint64(o, v, true);
    q(Sregs.cr0, s.cr0); q(Sregs.cr2, s.cr2); q(Sregs.cr3, s.cr3); q(Sregs.cr4, s.cr4);
    q(Sregs.cr8, s.cr8); q(Sregs.efer, s.efer); q(Sregs.apicBase, s.apicBase);
    libc.ioctl(this.fd, KVM.SET_SREGS, b, 'KVM_SET_SREGS');
  }

  setCpuid(entries: readonly CpuidEntryValue[]): void {
    const b = new Uint8Array(Cpuid2.header + entries.length * CpuidEntry.size);
    const dv = new DataView(b.buffer);
    dv.setUint32(Cpuid2.nent, entries.length, true);
    entries.forEach((e, i) => {
      const o = Cpuid2.header + i * CpuidEntry.size;
      for (const f of CPUID_FIELDS) dv.setUint32(o + CpuidEntry[f], e[f] >>> 0, true);
    });
    libc.ioctl(this.fd, KVM.SET_CPUID2, b, 'KVM_SET_CPUID2');
  }

  setMsrs(msrs: readonly { index: number; data: bigint }[]): void {
    const b = new Uint8Array(Msrs.header + msrs.length * MsrEntry.size);
    const dv = new DataView(b.buffer);
    dv.setUint32(Msrs.nmsrs, msrs.length, true);
    msrs.forEach((m, i) => {
      const o = Msrs.header + i * MsrEntry.size;
      dv.setUint32(o + MsrEntry.index, m.index, true);
      dv.setBigUint64(o + MsrEntry.data, m.data, true);
    });
    const n = libc.ioctl(this.fd, KVM.SET_MSRS, b, 'KVM_SET_MSRS');
    if (n !== msrs.length) {
      throw new SysError('KVM_SET_MSRS', 22, `only ${n} of ${msrs.length} MSRs set; first rejected 0x${msrs[n]!.index.toString(16)}`);
    }
  }

  getLapic(): Uint8Array {
    const b = new Uint8Array(Lapic.size);
    libc.ioctl(this.fd, KVM.GET_LAPIC, b, 'KVM_GET_LAPIC');
    return b;
  }

  setLapic(b: Uint8Array): void {
    libc.ioctl(this.fd, KVM.SET_LAPIC, b, 'KVM_SET_LAPIC');
  }

  setFpu(fcw: number, mxcsr: number): void {
    const b = new Uint8Array(Fpu.size);
    const dv = new DataView(b.buffer);
    dv.setUint16(Fpu.fcw, fcw, true);
    dv.setUint32(Fpu.mxcsr, mxcsr, true);
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

export { KvmRun };
