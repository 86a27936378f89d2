// What a hung guest says about itself (vmm/diagnosis.ts, AgentTimeoutError in vmm/agent-vm.ts):
// the LAPIC page and /proc task stat decoded, the text naming each vCPU's state and ending
// with the console tail, and waitForAgent past its deadline throwing an AgentTimeoutError that
// carries the diagnosis (console tail included) in its message and as data.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { AgentClient } from '../../../vmm/agent/client';
import { AgentTimeoutError, waitForAgent } from '../../../vmm/agent-vm';
import { ConsoleTail } from '../../../vmm/console/tail';
import {
  decodeLapic, formatCrash, formatDiagnosis, gifOf, kernelAddresses, parseKernelStack, parseTaskStat, summarizeEvents, type CrashState, type MachineDiagnosis,
} from '../../../vmm/diagnosis';
import { RECENT_EXITS, newRecentExits, noteAccess, noteExit, recentExits } from '../../../vmm/vcpu/recent';
import {
  ExitReason, KVM_STATE_NESTED_FORMAT_SVM, KVM_STATE_NESTED_GIF_SET, KVM_X86_SHADOW_INT_MOV_SS, KVM_X86_SHADOW_INT_STI, KvmSregs, KvmVcpuEvents, REG_NAMES,
} from '../../../kvm/layout';
import type { Regs, VcpuEvents } from '../../../kvm/kvm';
import { TsvmmError } from '../../../lib/errors';

function lapicPage(): Uint8Array {
  const page = new Uint8Array(1024);
  const dv = new DataView(page.buffer);
  dv.setUint32(0xf0, 0x1ff, true); // SVR: enabled, spurious vector 0xff
  dv.setUint32(0x80, 0x10, true); // TPR
  dv.setUint32(0xa0, 0x20, true); // PPR: the in-service 0x21's class
  dv.setUint32(0x200 + 7 * 16, 1 << 12, true); // IRR: vector 0xec (7*32 + 12)
  dv.setUint32(0x100 + 1 * 16, 1 << 1, true); // ISR: vector 0x21
  dv.setUint32(0x100 + 0 * 16, 1 << 31, true); // and vector 0x1f, below it
  dv.setUint32(0x320, 0x400ec, true); // LVT timer: TSC-deadline, vector 0xec
  dv.setUint32(0x380, 5000, true);
  dv.setUint32(0x390, 1234, true);
  return page;
}

function diagnosis(console: ConsoleTail): MachineDiagnosis {
  return {
    uptimeMs: 600_500, sampleMs: 1000,
    vcpus: [
      { vcpu: 0, tid: 101, worker: 'in KVM_RUN', lastExit: 'io', exits: { io: 900, mmio: 40, forwarded: 800 }, exitsInSample: 0, thread: { state: 'S', wchan: 'kvm_vcpu_block', cpuMsInSample: 0 }, mpState: 'halted', rip: '0xffffffff81a0c3e4', rflags: '0x246', interruptsEnabled: true, lapic: decodeLapic(lapicPage()) },
      { vcpu: 1, tid: 102, worker: 'in KVM_RUN', lastExit: null, exits: {}, exitsInSample: 0, error: 'the vCPU did not leave KVM_RUN within 2000 ms of a kick: registers not read' },
    ],
    devices: [{ name: 'virtio-vsock', status: 0xf, interruptStatus: 1, notifications: 3, interrupts: 2, queues: [{ size: 128, avail: 70, seen: 70, used: 64, usedEvent: 60 }, null, null] }],
    serialInterrupts: 17,
    serialUart: { ier: 0x07, iir: 0xc2, threPending: true, locked: false, rxBytes: 0 },
    serialRing: { pending: 4096, fullWaits: 2, dropped: 0 },
    console: { lines: console.snapshot(), totalBytes: console.total },
    host: { loadavg: [5.47, 6.78, 6.91], mainThreadCpuMsInSample: 620 },
  };
}

const bootLog = (): ConsoleTail => {
  const t = new ConsoleTail();
  for (let i = 0; i < 100; i++) t.push(Buffer.from(`[    0.${String(i).padStart(6, '0')}] early line ${i}\n`));
  t.push(Buffer.from('[    1.234567] smpboot: CPU 1 Converting physical 0 to logical die 0\n[    1.300000] tsc: Refined TSC clocksource calibration'));
  return t;
};

test('decodeLapic: enabled, TPR, pending and in-service vectors, the timer', () => {
  const l = decodeLapic(lapicPage());
  assert.equal(l, { enabled: true, tpr: 0x10, ppr: 0x20, inService: 0x21, irr: [0xec], isr: [0x1f, 0x21], timer: { lvt: 0x400ec, initial: 5000, current: 1234 } });
  assert.is(decodeLapic(new Uint8Array(1024)).inService, null, 'nothing in service');
  assert.throws(() => decodeLapic(new Uint8Array(16)), /1024 bytes/);
});

test('parseTaskStat: state and utime+stime, also with spaces and parentheses in comm', () => {
  const line = '4242 (tsvmm-vcpu0 (x)) R 1 2 3 0 -1 4194560 10 0 0 0 150 25 0 0 20 0 3 0 100 0 0';
  assert.equal(parseTaskStat(line), { state: 'R', ticks: 175 });
  assert.is(parseTaskStat('garbage'), undefined);
});

test('formatDiagnosis names each vCPU state, the devices, and ends with the console tail', () => {
  const text = formatDiagnosis(diagnosis(bootLog()));
  assert.match(text, 'machine up 600.5 s; vCPUs sampled over 1.0 s:');
  assert.match(text, 'vCPU 0 (tid 101): worker in KVM_RUN; mp_state halted; rip 0xffffffff81a0c3e4 IF=1; thread S in kvm_vcpu_block, 0 ms CPU in the sample; 0 exits in the sample (940 in all, last io)');
  assert.match(text, 'LAPIC on, TPR 0x10, PPR 0x20, IRR 0xec, ISR 0x1f,0x21 (in service: 0x21), timer LVT 0x400ec count 1234/5000');
  assert.match(text, 'vCPU 1 (tid 102): worker in KVM_RUN; 0 exits in the sample (0 in all, last none)');
  assert.match(text, '(the vCPU did not leave KVM_RUN within 2000 ms of a kick: registers not read)');
  assert.match(text, 'devices: virtio-vsock status 0xf isr 0x1 notifies 3 irqs 2 q0 avail 70 seen 70 used 64 used_event 60; com1 irqs 17, IER 0x7 IIR 0xc2 THRE pending, 0 bytes received, tx ring 4096 bytes pending, 2 full waits, 0 dropped');
  assert.match(text, "\nhost: load average 5.47 6.78 6.91; tsvmm's main thread 620 ms CPU in the sample\n");
  const lines = text.split('\n');
  assert.is(lines.at(-1), '| [    1.300000] tsc: Refined TSC clocksource calibration', 'the unfinished last line ends it');
  assert.is(lines.at(-2), '| [    1.234567] smpboot: CPU 1 Converting physical 0 to logical die 0');
  assert.match(text, /guest console \(last 64 lines of \d+ bytes\):/);
});

function events(over: Partial<VcpuEvents> = {}): VcpuEvents {
  return { ...KvmVcpuEvents.read(new Uint8Array(KvmVcpuEvents.size)), ...over };
}

test('summarizeEvents: the interrupt shadow, an interrupt or exception in flight, NMI and SMM', () => {
  assert.equal(summarizeEvents(events()), { shadow: null, injecting: null, exception: null, nmi: { injected: false, pending: false, masked: false }, smm: false });
  const e = summarizeEvents(events({ interruptShadow: KVM_X86_SHADOW_INT_STI | KVM_X86_SHADOW_INT_MOV_SS, interruptInjected: 1, interruptNr: 0xec, exceptionPending: 1, exceptionNr: 14, exceptionHasErrorCode: 1, exceptionErrorCode: 2, nmiMasked: 1, smiSmm: 1 }));
  assert.equal(e, { shadow: 'sti+mov ss', injecting: 0xec, exception: { vector: 14, injected: false, pending: true, errorCode: 2 }, nmi: { injected: false, pending: false, masked: true }, smm: true });
  assert.is(summarizeEvents(events({ interruptShadow: KVM_X86_SHADOW_INT_STI })).shadow, 'sti');
  assert.is(summarizeEvents(events({ interruptNr: 0x30 })).injecting, null, 'a stale vector without "injected" is nothing');
});

test('gifOf: GIF from an SVM nested-state header, nothing from VMX or none', () => {
  assert.is(gifOf({ format: KVM_STATE_NESTED_FORMAT_SVM, flags: KVM_STATE_NESTED_GIF_SET }), true);
  assert.is(gifOf({ format: KVM_STATE_NESTED_FORMAT_SVM, flags: 0 }), false);
  assert.is(gifOf({ format: 0, flags: 0 }), undefined, 'VMX has no GIF');
  assert.is(gifOf(undefined), undefined);
});

test('parseKernelStack: frames without their address prefix, at most max', () => {
  const text = '[<0>] svm_vcpu_run+0x1a/0x2c0 [kvm_amd]\n[<0>] kvm_arch_vcpu_ioctl_run+0x5d0/0x1ae0 [kvm]\n[<0>] kvm_vcpu_ioctl+0x24c/0x6a0 [kvm]\n';
  assert.equal(parseKernelStack(text), ['svm_vcpu_run+0x1a/0x2c0 [kvm_amd]', 'kvm_arch_vcpu_ioctl_run+0x5d0/0x1ae0 [kvm]', 'kvm_vcpu_ioctl+0x24c/0x6a0 [kvm]']);
  assert.equal(parseKernelStack(text, 1), ['svm_vcpu_run+0x1a/0x2c0 [kvm_amd]']);
  assert.equal(parseKernelStack(''), []);
});

test('formatDiagnosis: KVM events, GIF, KVM counters, code at rip and the host stack', () => {
  const d = diagnosis(bootLog());
  Object.assign(d.vcpus[0]!, {
    events: summarizeEvents(events({ interruptShadow: KVM_X86_SHADOW_INT_STI, nmiMasked: 1 })), gif: false,
    kvmInSample: { exits: 5000, irq_window_exits: 3, irq_injections: 0 + 7 }, code: 'fb f4 eb fd', control: { cr0: '0x80050033', cr2: '0x0', cr3: '0x5e9c000', cr4: '0x3506f0', efer: '0xd01' }, hostStack: ['svm_vcpu_run+0x1a/0x2c0 [kvm_amd]', 'kvm_vcpu_ioctl+0x24c/0x6a0 [kvm]'],
  });
  const text = formatDiagnosis(d);
  assert.match(text, '\n    KVM: interrupt shadow sti, injecting no interrupt, NMI masked, GIF 0\n');
  assert.match(text, '\n    KVM counters in the sample: exits 5000, irq_injections 7, irq_window_exits 3\n');
  assert.match(text, '\n    cr0 0x80050033 cr2 0x0 cr3 0x5e9c000 cr4 0x3506f0 efer 0xd01\n    code at rip: fb f4 eb fd\n');
  delete d.vcpus[0]!.code;
  assert.match(formatDiagnosis(d), '\n    code at rip: not mapped (KVM_TRANSLATE)\n', 'rip read but its page not mapped');
  assert.match(text, '\n    host stack: svm_vcpu_run+0x1a/0x2c0 [kvm_amd] < kvm_vcpu_ioctl+0x24c/0x6a0 [kvm]\n');
  d.vcpus[0]!.kvmInSample = {};
  assert.match(formatDiagnosis(d), 'KVM counters in the sample: none grew', 'a vCPU that never exits to KVM says so');
});

test('kernelAddresses: only the stack words where the kernel maps its image and modules, in stack order', () => {
  const words = [0xffffffff81a5a45en, 0x1234n, 0xffff888003c1be00n, 0xffffffffc0a01234n, 0xffffffffff600000n, 0xffffffff80000000n];
  const stack = new Uint8Array(words.length * 8 + 4);
  const dv = new DataView(stack.buffer);
  words.forEach((w, i) => dv.setBigUint64(i * 8, w, true));
  assert.equal(kernelAddresses(stack), ['0xffffffff81a5a45e', '0xffffffffc0a01234', '0xffffffff80000000'], 'direct-map pointers, the vsyscall page and a trailing partial word are not code');
  assert.equal(kernelAddresses(stack, 1), ['0xffffffff81a5a45e']);
});

test('formatDiagnosis lists the registers (rip and rflags once) and the stack addresses', () => {
  const d = diagnosis(bootLog());
  d.vcpus[0]!.registers = { rax: '0x0', rbx: '0x1', rcx: '0x2', rdx: '0x3', rsi: '0x4', rdi: '0x5', rsp: '0xffffc90000013e88', rip: '0xffffffff81a0c3e4', rflags: '0x46' };
  d.vcpus[0]!.stack = ['0xffffffff81a5a45e', '0xffffffff81062d10'];
  const text = formatDiagnosis(d);
  assert.match(text, '\n    rax=0x0 rbx=0x1 rcx=0x2 rdx=0x3 rsi=0x4 rdi=0x5\n    rsp=0xffffc90000013e88\n');
  assert.not.match(text, 'rip=');
  assert.match(text, '\n    stack: 0xffffffff81a5a45e 0xffffffff81062d10\n');
});

test('an empty console says so', () => {
  const text = formatDiagnosis({ ...diagnosis(new ConsoleTail()), vcpus: [] });
  assert.match(text, 'guest console: nothing printed');
});

test('the recent-exits ring keeps the last RECENT_EXITS exits, oldest first, with the access each made', () => {
  const ring = newRecentExits();
  assert.equal(recentExits(ring), []);
  for (let i = 0; i < RECENT_EXITS + 3; i++) {
    noteExit(ring, ExitReason.IO);
    noteAccess(ring, 0x3f8 + i, 1, new Uint8Array([i, 0xaa, 0xbb, 0xcc, 0xdd]));
  }
  noteExit(ring, ExitReason.SHUTDOWN);
  const got = recentExits(ring);
  assert.is(got.length, RECENT_EXITS);
  assert.equal(got[0], { reason: ExitReason.IO, addr: 0x3f8 + 4, info: 1, data: 0xccbbaa04 }, 'the oldest kept, its first four bytes little-endian');
  assert.equal(got.at(-1), { reason: ExitReason.SHUTDOWN, addr: 0, info: 0, data: 0 }, 'an exit without an access');
});

function crash(init: boolean): CrashState {
  const regs = Object.fromEntries(REG_NAMES.map((n, i) => [n, BigInt(i)])) as Regs;
  const sregs = KvmSregs.read(new Uint8Array(KvmSregs.size));
  if (init) {
    regs.rip = 0xfff0n;
    sregs.cs.selector = 0xf000;
    sregs.cs.base = 0xffff0000n;
  } else {
    regs.rip = 0xffffffff81234567n;
    sregs.cs.selector = 0x10;
    sregs.cr0 = 0x80050033n;
    sregs.cr3 = 0x1234000n;
    sregs.efer = 0xd01n;
    sregs.idt = { base: 0xfffffe0000000000n, limit: 0xfff };
  }
  const ring = newRecentExits();
  noteExit(ring, ExitReason.MMIO);
  noteAccess(ring, 0xd0000070, 4 + 0x100, new Uint8Array([0, 0, 0, 0]));
  noteExit(ring, ExitReason.IO);
  noteAccess(ring, 0x3f8, 1 + 0x100 + 3 * 0x10000, new Uint8Array([0x41]));
  noteExit(ring, ExitReason.SHUTDOWN);
  return { vcpu: 1, regs, sregs, recent: recentExits(ring), others: [{ vcpu: 0, worker: 'in KVM_RUN', lastExit: 'mmio' }] };
}

test("formatCrash: the fault's registers, control registers and tables, the last exits decoded, the other vCPUs", () => {
  const text = formatCrash(crash(false)).join('\n');
  assert.match(text, /^vCPU 1 at the crash:/);
  assert.match(text, 'rip 0xffffffff81234567');
  assert.match(text, 'cr0 0x80050033 cr2 0x0 cr3 0x1234000 cr4 0x0 efer 0xd01');
  assert.match(text, 'idt 0xfffffe0000000000/0xfff');
  assert.match(text, 'rax=0x0 rbx=0x1');
  assert.match(text, 'last 3 exits, oldest first: mmio write 0xd0000070 4B = 0x0; io write port 0x3f8 1B ×3 = 0x41; shutdown');
  assert.match(text, 'vCPU 0: worker in KVM_RUN, last exit mmio');
  assert.not.match(text, 'INIT state');
});

test('formatCrash says when the registers are the INIT state KVM leaves on AMD, or why there are none', () => {
  assert.match(formatCrash(crash(true)).join('\n'), /these are the INIT state/);
  const none = formatCrash({ vcpu: 0, recent: [], others: [], error: 'its worker is in KVM_RUN: registers not read' }).join('\n');
  assert.match(none, '(its worker is in KVM_RUN: registers not read)');
  assert.match(none, 'no exit before this one');
});

test('waitForAgent past its deadline: an AgentTimeoutError carrying the diagnosis and the console tail', async () => {
  const client = new AgentClient(() => Promise.reject(new Error('connection refused')));
  const tail = bootLog();
  let asked = 0;
  const t0 = Date.now();
  const err = await waitForAgent(client, Date.now() + 300, () => false, undefined, async () => {
    asked++;
    return diagnosis(tail);
  }).then(() => undefined, (e: Error) => e);
  assert.instance(err, AgentTimeoutError);
  assert.instance(err, TsvmmError);
  const e = err as AgentTimeoutError;
  assert.is(asked, 1);
  assert.ok(Date.now() - t0 < 5000);
  assert.match(e.message, /^the guest agent did not answer within 0 s \(last attempt: cannot connect to the agent: connection refused\)\n/);
  assert.equal(e.diagnosis!.console.lines, tail.snapshot());
  assert.match(e.message, '\n| [    1.300000] tsc: Refined TSC clocksource calibration');
  assert.match(e.message, 'mp_state halted');
});

test('a diagnosis that fails leaves the timeout error without one, saying so; no diagnose: the last error as before', async () => {
  const client = new AgentClient(() => Promise.reject(new Error('connection refused')));
  const e = await waitForAgent(client, Date.now() + 100, () => false, undefined, () => Promise.reject(new Error('boom'))).catch((x: Error) => x);
  assert.instance(e, AgentTimeoutError);
  assert.is((e as AgentTimeoutError).diagnosis, undefined);
  assert.match((e as Error).message, '(the machine could not be diagnosed)');
  const plain = await waitForAgent(client, Date.now() + 100, () => false).catch((x: Error) => x);
  assert.not.instance(plain, AgentTimeoutError);
  assert.match((plain as Error).message, 'connection refused');
});

test.run();
