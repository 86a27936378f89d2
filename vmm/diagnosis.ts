// What a machine looked like when its guest did not answer: the tail of the guest console and,
// per vCPU, what its thread was doing (in KVM_RUN or waiting for the main thread), its last exit,
// how many exits and how much CPU time it took over a short sample, and — read while the vCPU
// is parked out of KVM_RUN — its run state (halted, an AP never started), instruction pointer
// and local APIC (pending and in-service vectors, the timer). Made when waiting for the agent
// times out or is interrupted, so the next hang explains itself. This module holds the
// types and their decoding and formatting, free of KVM; Machine.diagnose() gathers them.

import type { Regs, VcpuEvents } from '../kvm/kvm';
import {
  ExitReason, KVM_STATE_NESTED_FORMAT_SVM, KVM_STATE_NESTED_GIF_SET, KVM_X86_SHADOW_INT_MOV_SS, KVM_X86_SHADOW_INT_STI, REG_NAMES,
  exitReasonName, type SpecialRegs,
} from '../kvm/layout';
import type { QueueState } from '../devices/virtio/queue';
import { RECENT_COUNT, RECENT_WRITE, type RecentExit } from './vcpu/recent';

/** One vCPU, as VcpuThreads.inspect() found it. */
export interface VcpuDiagnosis {
  vcpu: number;
  tid: number;
  /** What its worker was doing (VCPU_STATE_NAMES). */
  worker: string;
  /** Its last KVM exit reason's name, or null before the first. */
  lastExit: string | null;
  /** Exits to userspace so far, by reason (plus forwarded/shared, as in metrics). */
  exits: Record<string, number>;
  /** Exits to userspace during the sample. */
  exitsInSample: number;
  /** The thread as /proc saw it at the end of the sample: R, S, D, ...; where it sleeps; CPU time used in the sample. */
  thread?: { state: string; wchan: string; cpuMsInSample: number };
  /** Read while the vCPU was parked (absent when it could not be). */
  mpState?: string;
  rip?: string;
  rflags?: string;
  /** RFLAGS.IF: whether the guest took interrupts at that instruction. */
  interruptsEnabled?: boolean;
  lapic?: LapicSummary;
  /** What KVM holds for the vCPU besides the LAPIC (KVM_GET_VCPU_EVENTS): the interrupt shadow, an event being injected, NMI, SMM. */
  events?: EventsSummary;
  /** AMD only: whether the vCPU's global interrupt flag is set (KVM_GET_NESTED_STATE); with it clear KVM injects nothing. */
  gif?: boolean;
  /** Control registers and EFER (KVM_GET_SREGS), in hex: the paging state KVM walks the guest's tables with. */
  control?: { cr0: string; cr2: string; cr3: string; cr4: string; efer: string };
  /** The instruction bytes at rip (16, hex), to tell a loop, a HLT or a faulting instruction apart. */
  code?: string;
  /**
   * KVM's own counters over the sample (KVM_GET_STATS_FD), those that grew: exits to KVM of
   * every kind, interrupts injected, interrupt-window exits, ... — what the vCPU does inside
   * KVM_RUN when it makes no exit to userspace.
   */
  kvmInSample?: Record<string, number>;
  /** The vCPU thread's host kernel stack at the end of the sample (/proc/self/task/TID/stack; root only). */
  hostStack?: string[];
  /** Every general-purpose register, in hex (read while parked). */
  registers?: Record<string, string>;
  /**
   * The words on its stack, from rsp up, that point into the kernel image or its modules: a
   * crude backtrace (Linux unwinds with ORC tables the VMM does not read), oldest last.
   * `node tools/symbolize.mjs System.map` turns these addresses into symbol+offset.
   */
  stack?: string[];
  /** Why some of the above is missing. */
  error?: string;
}

export interface LapicSummary {
  /** APIC software-enabled (SVR bit 8). */
  enabled: boolean;
  tpr: number;
  /** Processor priority: a pending vector is delivered only if its class (vector >> 4) is above PPR's. */
  ppr: number;
  /** The vector being serviced (the highest in ISR: the guest has not yet written EOI for it), or null. */
  inService: number | null;
  /** Vectors requested (IRR) and in service (ISR). */
  irr: number[];
  isr: number[];
  /** LVT timer register, initial and current count. */
  timer: { lvt: number; initial: number; current: number };
}

export interface DeviceDiagnosis {
  name: string;
  /** virtio device status (STATUS bits), InterruptStatus, queue notifications and interrupts raised. */
  status: number;
  interruptStatus: number;
  notifications: number;
  interrupts: number;
  /** Each ready queue's ring indices (Queue.inspect()), null for one not ready. */
  queues: (QueueState | null)[];
}

export interface MachineDiagnosis {
  /** Milliseconds since the machine started. */
  uptimeMs: number;
  sampleMs: number;
  vcpus: VcpuDiagnosis[];
  devices: DeviceDiagnosis[];
  /** Interrupts the serial port raised (THRE and receive). */
  serialInterrupts: number;
  /**
   * The serial transmit ring (devices/tx-ring.ts): bytes the vCPUs pushed that main has not
   * drained yet — output that stopped while this grows means main stopped draining, not the guest.
   */
  serialRing?: { pending: number; fullWaits: number; dropped: number };
  /**
   * The UART's interrupt state (devices/serial.ts): IER as written, IIR as the next read returns
   * it, whether a THRE interrupt is pending, whether its lock is held, bytes waiting for the guest.
   */
  serialUart?: { ier: number; iir: number; threPending: boolean; locked: boolean; rxBytes: number };
  console: { lines: string[]; totalBytes: number };
  /** Why the VM is ending, if it is. */
  ending?: string;
  /**
   * The host: its load average, and the CPU time this process's main thread (which answers
   * every forwarded access) used during the sample — saturated, or waiting to be woken.
   */
  host?: { loadavg: number[]; mainThreadCpuMsInSample?: number };
}

const LAPIC = { TPR: 0x80, PPR: 0xa0, SVR: 0xf0, ISR: 0x100, IRR: 0x200, LVT_TIMER: 0x320, TIMER_INITIAL: 0x380, TIMER_CURRENT: 0x390 } as const;

/** The vectors of a 256-bit LAPIC register set (eight 32-bit words, 16 bytes apart). */
function vectors(page: Uint8Array, base: number): number[] {
  const dv = new DataView(page.buffer, page.byteOffset, page.byteLength);
  const out: number[] = [];
  for (let w = 0; w < 8; w++) {
    const bits = dv.getUint32(base + w * 16, true);
    for (let b = 0; b < 32; b++) if (bits & (1 << b)) out.push(w * 32 + b);
  }
  return out;
}

/** The parts of a KVM_GET_LAPIC page that say whether an interrupt is stuck. */
export function decodeLapic(page: Uint8Array): LapicSummary {
  if (page.length < 0x400) throw new RangeError(`a LAPIC page is 1024 bytes, not ${page.length}`);
  const dv = new DataView(page.buffer, page.byteOffset, page.byteLength);
  const r = (off: number) => dv.getUint32(off, true);
  const isr = vectors(page, LAPIC.ISR);
  return {
    enabled: (r(LAPIC.SVR) & 0x100) !== 0,
    tpr: r(LAPIC.TPR) & 0xff,
    ppr: r(LAPIC.PPR) & 0xff,
    inService: isr.length ? isr[isr.length - 1]! : null,
    irr: vectors(page, LAPIC.IRR),
    isr,
    timer: { lvt: r(LAPIC.LVT_TIMER), initial: r(LAPIC.TIMER_INITIAL), current: r(LAPIC.TIMER_CURRENT) },
  };
}

export interface EventsSummary {
  /** The interrupt shadow (no interrupt before the next instruction): 'sti', 'mov ss', both, or null. */
  shadow: string | null;
  /** An interrupt KVM is injecting (its vector), or null. */
  injecting: number | null;
  /** An exception KVM has pending or is injecting, or null. */
  exception: { vector: number; injected: boolean; pending: boolean; errorCode?: number } | null;
  nmi: { injected: boolean; pending: boolean; masked: boolean };
  smm: boolean;
}

/** The parts of KVM_GET_VCPU_EVENTS that say why KVM would not deliver a pending interrupt. */
export function summarizeEvents(e: VcpuEvents): EventsSummary {
  const sh = [e.interruptShadow & KVM_X86_SHADOW_INT_STI ? 'sti' : '', e.interruptShadow & KVM_X86_SHADOW_INT_MOV_SS ? 'mov ss' : ''].filter(Boolean);
  return {
    shadow: sh.length ? sh.join('+') : null,
    injecting: e.interruptInjected ? e.interruptNr : null,
    exception: e.exceptionInjected || e.exceptionPending
      ? { vector: e.exceptionNr, injected: e.exceptionInjected !== 0, pending: e.exceptionPending !== 0, ...(e.exceptionHasErrorCode ? { errorCode: e.exceptionErrorCode } : {}) }
      : null,
    nmi: { injected: e.nmiInjected !== 0, pending: e.nmiPending !== 0, masked: e.nmiMasked !== 0 },
    smm: e.smiSmm !== 0,
  };
}

/** GIF from a KVM_GET_NESTED_STATE header: a boolean on AMD (SVM format), undefined elsewhere. */
export function gifOf(h: { format: number; flags: number } | undefined): boolean | undefined {
  return h && h.format === KVM_STATE_NESTED_FORMAT_SVM ? (h.flags & KVM_STATE_NESTED_GIF_SET) !== 0 : undefined;
}

/** /proc/…/stack lines ("[<0>] kvm_arch_vcpu_ioctl_run+0x2b3/0x1ae0 [kvm]") as "kvm_arch_vcpu_ioctl_run+0x2b3/0x1ae0 [kvm]". */
export function parseKernelStack(text: string, max = 16): string[] {
  return text.split('\n').map((l) => l.replace(/^\[<[0-9a-fx]+>\]\s*/, '').trim()).filter(Boolean).slice(0, max);
}

/** State and CPU ticks (utime + stime) from a /proc/<pid>/task/<tid>/stat line; undefined if it does not parse. */
export function parseTaskStat(line: string): { state: string; ticks: number } | undefined {
  // comm may hold spaces and parentheses: the fields start after the last ')'.
  const end = line.lastIndexOf(')');
  if (end < 0) return undefined;
  const f = line.slice(end + 2).trim().split(/\s+/);
  // f[0] is field 3 (state); utime and stime are fields 14 and 15.
  const utime = Number(f[11]);
  const stime = Number(f[12]);
  if (!f[0] || !Number.isFinite(utime) || !Number.isFinite(stime)) return undefined;
  return { state: f[0], ticks: utime + stime };
}

/** A number as the diagnosis prints it: 0x and lower-case hex. */
export const hex = (n: number | bigint) => `0x${n.toString(16)}`;

/** Where x86-64 Linux maps its image and modules (Documentation/arch/x86/x86_64/mm.rst). */
const KERNEL_TEXT_START = 0xffffffff80000000n;
const KERNEL_TEXT_END = 0xffffffffff000000n;

/** The 8-byte little-endian words of `stack` that fall where the kernel maps its code. */
export function kernelAddresses(stack: Uint8Array, max = 32): string[] {
  const dv = new DataView(stack.buffer, stack.byteOffset, stack.byteLength);
  const out: string[] = [];
  for (let o = 0; o + 8 <= stack.byteLength && out.length < max; o += 8) {
    const w = dv.getBigUint64(o, true);
    if (w >= KERNEL_TEXT_START && w < KERNEL_TEXT_END) out.push(hex(w));
  }
  return out;
}

function formatVcpu(v: VcpuDiagnosis): string {
  const parts = [`vCPU ${v.vcpu} (tid ${v.tid}): worker ${v.worker}`];
  if (v.mpState) parts.push(`mp_state ${v.mpState}`);
  if (v.rip) parts.push(`rip ${v.rip}${v.interruptsEnabled === undefined ? '' : v.interruptsEnabled ? ' IF=1' : ' IF=0'}`);
  if (v.thread) parts.push(`thread ${v.thread.state}${v.thread.wchan ? ` in ${v.thread.wchan}` : ''}, ${v.thread.cpuMsInSample.toFixed(0)} ms CPU in the sample`);
  const total = Object.entries(v.exits).filter(([k]) => k !== 'forwarded' && k !== 'shared').reduce((s, [, n]) => s + n, 0);
  parts.push(`${v.exitsInSample} exits in the sample (${total} in all, last ${v.lastExit ?? 'none'})`);
  let line = `  ${parts.join('; ')}`;
  if (v.lapic) {
    const l = v.lapic;
    const list = (xs: number[]) => (xs.length ? xs.map(hex).join(',') : '-');
    line += `\n    LAPIC ${l.enabled ? 'on' : 'OFF'}, TPR ${hex(l.tpr)}, PPR ${hex(l.ppr)}, IRR ${list(l.irr)}, ISR ${list(l.isr)} (in service: ${l.inService === null ? 'none' : hex(l.inService)}), timer LVT ${hex(l.timer.lvt)}${l.timer.lvt & 0x10000 ? ' (masked)' : ''} count ${l.timer.current}/${l.timer.initial}`;
  }
  if (v.events || v.gif !== undefined) {
    const e = v.events;
    const parts: string[] = [];
    if (e) {
      parts.push(`interrupt shadow ${e.shadow ?? 'none'}`);
      parts.push(e.injecting === null ? 'injecting no interrupt' : `injecting interrupt ${hex(e.injecting)}`);
      if (e.exception) parts.push(`exception ${e.exception.vector}${e.exception.injected ? ' injected' : ''}${e.exception.pending ? ' pending' : ''}${e.exception.errorCode === undefined ? '' : ` (error code ${hex(e.exception.errorCode)})`}`);
      const nmi = [e.nmi.injected && 'injected', e.nmi.pending && 'pending', e.nmi.masked && 'masked'].filter(Boolean);
      parts.push(`NMI ${nmi.length ? nmi.join('/') : '-'}`);
      if (e.smm) parts.push('in SMM');
    }
    if (v.gif !== undefined) parts.push(`GIF ${v.gif ? 1 : 0}`);
    line += `\n    KVM: ${parts.join(', ')}`;
  }
  if (v.kvmInSample) {
    const k = Object.entries(v.kvmInSample).sort((a, b) => b[1] - a[1]).slice(0, 16).map(([n, x]) => `${n} ${x}`).join(', ');
    line += `\n    KVM counters in the sample: ${k || 'none grew'}`;
  }
  if (v.control) line += `\n    cr0 ${v.control.cr0} cr2 ${v.control.cr2} cr3 ${v.control.cr3} cr4 ${v.control.cr4} efer ${v.control.efer}`;
  if (v.code) line += `\n    code at rip: ${v.code}`;
  else if (v.rip && v.control) line += `\n    code at rip: not mapped (KVM_TRANSLATE)`;
  if (v.hostStack?.length) line += `\n    host stack: ${v.hostStack.join(' < ')}`;
  const top = Object.entries(v.exits).sort((a, b) => b[1] - a[1]).slice(0, 6).map(([k, n]) => `${k} ${n}`).join(', ');
  if (top) line += `\n    exits: ${top}`;
  if (v.registers) {
    const regs = Object.entries(v.registers).filter(([k]) => k !== 'rip' && k !== 'rflags').map(([k, x]) => `${k}=${x}`);
    for (let i = 0; i < regs.length; i += 6) line += `\n    ${regs.slice(i, i + 6).join(' ')}`;
  }
  if (v.stack?.length) line += `\n    stack: ${v.stack.join(' ')}`;
  if (v.error) line += `\n    (${v.error})`;
  return line;
}

/** The diagnosis as text: vCPUs, devices, then the console tail (each line prefixed with '| '). */
export function formatDiagnosis(d: MachineDiagnosis): string {
  const out = [`machine up ${(d.uptimeMs / 1000).toFixed(1)} s${d.ending ? `, ending: ${d.ending}` : ''}; vCPUs sampled over ${(d.sampleMs / 1000).toFixed(1)} s:`];
  for (const v of d.vcpus) out.push(formatVcpu(v));
  const queue = (q: QueueState | null, i: number) => q ? ` q${i} avail ${q.avail} seen ${q.seen} used ${q.used} used_event ${q.usedEvent}` : '';
  const devs = d.devices.map((x) => `${x.name} status ${hex(x.status)} isr ${hex(x.interruptStatus)} notifies ${x.notifications} irqs ${x.interrupts}${x.queues.map(queue).join('')}`);
  const ring = d.serialRing ? `, tx ring ${d.serialRing.pending} bytes pending, ${d.serialRing.fullWaits} full waits, ${d.serialRing.dropped} dropped` : '';
  const u = d.serialUart;
  const uart = u ? `, IER ${hex(u.ier)} IIR ${hex(u.iir)}${u.threPending ? ' THRE pending' : ''}${u.locked ? ' locked' : ''}, ${u.rxBytes} bytes received` : '';
  out.push(`devices: ${[...devs, `com1 irqs ${d.serialInterrupts}${uart}${ring}`].join('; ')}`);
  if (d.host) {
    const main = d.host.mainThreadCpuMsInSample === undefined ? '' : `; tsvmm's main thread ${d.host.mainThreadCpuMsInSample.toFixed(0)} ms CPU in the sample`;
    out.push(`host: load average ${d.host.loadavg.map((x) => x.toFixed(2)).join(' ')}${main}`);
  }
  const n = d.console.lines.length;
  out.push(n ? `guest console (last ${n} line${n === 1 ? '' : 's'} of ${d.console.totalBytes} bytes):` : `guest console: ${d.console.totalBytes ? `${d.console.totalBytes} bytes, no complete line` : 'nothing printed'}`);
  for (const l of d.console.lines) out.push(`| ${l}`);
  return out.join('\n');
}

/** A vCPU whose exit ended the VM, as VcpuThreads.crashState() read it. */
export interface CrashState {
  vcpu: number;
  regs?: Regs;
  sregs?: SpecialRegs;
  /** Its last exits, oldest first. */
  recent: RecentExit[];
  /** The other vCPUs: what their workers were doing and their last exit. */
  others: { vcpu: number; worker: string; lastExit: string | null }[];
  /** Why the registers are missing. */
  error?: string;
}

/**
 * The registers of a vCPU just after KVM's INIT: on an AMD host KVM INITs a vCPU when the guest
 * shuts down (arch/x86/kvm/svm/svm.c shutdown_interception, "the VMCB is undefined after a
 * SHUTDOWN intercept"), so there the registers read after a triple fault are these, not the
 * guest's; on Intel they are the guest's at the fault.
 */
function isInitState(regs: Regs, sregs: SpecialRegs): boolean {
  return regs.rip === 0xfff0n && sregs.cs.selector === 0xf000 && sregs.cs.base === 0xffff0000n;
}

function formatRecentExit(e: RecentExit): string {
  const name = exitReasonName(e.reason).toLowerCase();
  if (e.reason !== ExitReason.IO && e.reason !== ExitReason.MMIO) return name;
  const size = e.info % RECENT_WRITE;
  const write = Math.floor(e.info / RECENT_WRITE) % 2 === 1;
  const count = Math.floor(e.info / RECENT_COUNT);
  const where = e.reason === ExitReason.IO ? `port ${hex(e.addr)}` : hex(e.addr);
  return `${name} ${write ? 'write' : 'read'} ${where} ${size}B${count > 1 ? ` ×${count}` : ''} = ${hex(e.data)}`;
}

/** The crash report, one log line each (a log line holds no newline): what a triple fault leaves to explain it. */
export function formatCrash(c: CrashState): string[] {
  const out = [`vCPU ${c.vcpu} at the crash:`];
  const { regs, sregs } = c;
  if (regs && sregs) {
    if (isInitState(regs, sregs)) {
      out.push('  (these are the INIT state: KVM re-initialises a vCPU that shut down on an AMD host, so the guest\'s registers at the fault are lost; its last exits below still say what it did)');
    }
    out.push(`  rip ${hex(regs.rip)} rflags ${hex(regs.rflags)} rsp ${hex(regs.rsp)} cs ${hex(sregs.cs.selector)} (base ${hex(sregs.cs.base)}) ss ${hex(sregs.ss.selector)}`);
    out.push(`  cr0 ${hex(sregs.cr0)} cr2 ${hex(sregs.cr2)} cr3 ${hex(sregs.cr3)} cr4 ${hex(sregs.cr4)} efer ${hex(sregs.efer)}`);
    out.push(`  idt ${hex(sregs.idt.base)}/${hex(sregs.idt.limit)} gdt ${hex(sregs.gdt.base)}/${hex(sregs.gdt.limit)} tr ${hex(sregs.tr.selector)} (base ${hex(sregs.tr.base)})`);
    const gprs = REG_NAMES.filter((n) => n !== 'rip' && n !== 'rflags' && n !== 'rsp').map((n) => `${n}=${hex(regs[n])}`);
    for (let i = 0; i < gprs.length; i += 8) out.push(`  ${gprs.slice(i, i + 8).join(' ')}`);
  } else {
    out.push(`  (${c.error ?? 'registers not read'})`);
  }
  out.push(c.recent.length ? `  last ${c.recent.length} exits, oldest first: ${c.recent.map(formatRecentExit).join('; ')}` : '  no exit before this one');
  for (const o of c.others) out.push(`  vCPU ${o.vcpu}: worker ${o.worker}, last exit ${o.lastExit ?? 'none'}`);
  return out;
}
