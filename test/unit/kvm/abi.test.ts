// Checks kvm/ioctl.ts and kvm/layout.ts against the system's <linux/kvm.h>: a generated C
// program prints every ioctl number, capability, exit reason, struct size and field offset
// tsvmm relies on, and each is compared with the TypeScript constant. Needs gcc and the
// kernel headers (linux-libc-dev), not KVM.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KVM, KVM_CAP, ioc } from '../../../kvm/ioctl';
import { SCHED, SchedAttr } from '../../../kvm/libc';
import {
  Cpuid2, CpuidEntry, EnableCap, ExitReason, Fpu, Ioeventfd, Irqfd, IrqLevel, KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
  KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT, KVM_IOEVENTFD_FLAG_DATAMATCH, KVM_IOEVENTFD_FLAG_PIO,
  KVM_PIT_SPEAKER_DUMMY, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
  KvmRun, Lapic, MemRegion, MsrEntry, Msrs, PitConfig, SIZEOF_KVM_DTABLE, SIZEOF_KVM_REGS,
  SIZEOF_KVM_SEGMENT, Sregs,
} from '../../../kvm/layout';

/** C expression → the value tsvmm uses for it. */
const expected = new Map<string, number>();
const want = (cExpr: string, value: number) => expected.set(cExpr, value);

for (const [name, value] of Object.entries(KVM)) want(`KVM_${name}`, value);
for (const [name, value] of Object.entries(KVM_CAP)) want(`KVM_CAP_${name}`, value);
for (const [name, value] of Object.entries(ExitReason)) want(`KVM_EXIT_${name}`, value);
want('KVM_EXIT_IO_IN', KVM_EXIT_IO_IN);
want('KVM_EXIT_IO_OUT', KVM_EXIT_IO_OUT);
want('KVM_SYSTEM_EVENT_SHUTDOWN', KVM_SYSTEM_EVENT_SHUTDOWN);
want('KVM_SYSTEM_EVENT_RESET', KVM_SYSTEM_EVENT_RESET);
want('KVM_SYSTEM_EVENT_CRASH', KVM_SYSTEM_EVENT_CRASH);
want('KVM_CPUID_FLAG_SIGNIFCANT_INDEX', KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
want('KVM_IOEVENTFD_FLAG_DATAMATCH', KVM_IOEVENTFD_FLAG_DATAMATCH);
want('KVM_IOEVENTFD_FLAG_PIO', KVM_IOEVENTFD_FLAG_PIO);
want('KVM_PIT_SPEAKER_DUMMY', KVM_PIT_SPEAKER_DUMMY);
for (const [name, value] of Object.entries(SCHED)) want(`SCHED_${name}`, value);
want('SCHED_ATTR_SIZE_VER0', SchedAttr.size);

const off = (struct: string, field: string, value: number) => want(`offsetof(struct ${struct}, ${field})`, value);
const size = (struct: string, value: number) => want(`sizeof(struct ${struct})`, value);

off('kvm_run', 'request_interrupt_window', KvmRun.requestInterruptWindow);
off('kvm_run', 'immediate_exit', KvmRun.immediateExit);
off('kvm_run', 'exit_reason', KvmRun.exitReason);
off('kvm_run', 'ready_for_interrupt_injection', KvmRun.readyForInterruptInjection);
off('kvm_run', 'if_flag', KvmRun.ifFlag);
off('kvm_run', 'hw', KvmRun.union);
off('kvm_run', 'io.direction', KvmRun.io.direction);
off('kvm_run', 'io.size', KvmRun.io.size);
off('kvm_run', 'io.port', KvmRun.io.port);
off('kvm_run', 'io.count', KvmRun.io.count);
off('kvm_run', 'io.data_offset', KvmRun.io.dataOffset);
off('kvm_run', 'mmio.phys_addr', KvmRun.mmio.physAddr);
off('kvm_run', 'mmio.data', KvmRun.mmio.data);
off('kvm_run', 'mmio.len', KvmRun.mmio.len);
off('kvm_run', 'mmio.is_write', KvmRun.mmio.isWrite);
off('kvm_run', 'system_event.type', KvmRun.systemEvent.type);
off('kvm_run', 'system_event.ndata', KvmRun.systemEvent.ndata);
off('kvm_run', 'system_event.data', KvmRun.systemEvent.data);
off('kvm_run', 'internal.suberror', KvmRun.internal.suberror);
off('kvm_run', 'internal.ndata', KvmRun.internal.ndata);
off('kvm_run', 'internal.data', KvmRun.internal.data);
off('kvm_run', 'fail_entry.hardware_entry_failure_reason', KvmRun.failEntry.hardwareEntryFailureReason);
off('kvm_run', 'fail_entry.cpu', KvmRun.failEntry.cpu);

size('kvm_regs', SIZEOF_KVM_REGS);
size('kvm_segment', SIZEOF_KVM_SEGMENT);
size('kvm_dtable', SIZEOF_KVM_DTABLE);
size('kvm_sregs', Sregs.size);
Sregs.segments.forEach((seg, i) => off('kvm_sregs', seg, i * SIZEOF_KVM_SEGMENT));
off('kvm_sregs', 'gdt', Sregs.gdt);
off('kvm_sregs', 'idt', Sregs.idt);
for (const cr of ['cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer'] as const) off('kvm_sregs', cr, Sregs[cr]);
off('kvm_sregs', 'apic_base', Sregs.apicBase);
off('kvm_sregs', 'interrupt_bitmap', Sregs.interruptBitmap);
// kvm_segment field order as readSegment/writeSegment use it.
for (const [field, o] of [['base', 0], ['limit', 8], ['selector', 12], ['type', 14], ['present', 15], ['dpl', 16],
  ['db', 17], ['s', 18], ['l', 19], ['g', 20], ['avl', 21], ['unusable', 22]] as const) off('kvm_segment', field, o);

size('kvm_userspace_memory_region', MemRegion.size);
off('kvm_userspace_memory_region', 'slot', MemRegion.slot);
off('kvm_userspace_memory_region', 'flags', MemRegion.flags);
off('kvm_userspace_memory_region', 'guest_phys_addr', MemRegion.guestPhysAddr);
off('kvm_userspace_memory_region', 'memory_size', MemRegion.memorySize);
off('kvm_userspace_memory_region', 'userspace_addr', MemRegion.userspaceAddr);

size('kvm_cpuid2', Cpuid2.header);
off('kvm_cpuid2', 'nent', Cpuid2.nent);
off('kvm_cpuid2', 'entries', Cpuid2.header);
size('kvm_cpuid_entry2', CpuidEntry.size);
for (const f of ['function', 'index', 'flags', 'eax', 'ebx', 'ecx', 'edx'] as const) off('kvm_cpuid_entry2', f, CpuidEntry[f]);

size('kvm_msrs', Msrs.header);
off('kvm_msrs', 'nmsrs', Msrs.nmsrs);
off('kvm_msrs', 'entries', Msrs.header);
size('kvm_msr_entry', MsrEntry.size);
off('kvm_msr_entry', 'index', MsrEntry.index);
off('kvm_msr_entry', 'data', MsrEntry.data);

size('kvm_pit_config', PitConfig.size);
off('kvm_pit_config', 'flags', PitConfig.flags);
size('kvm_irqfd', Irqfd.size);
for (const f of ['fd', 'gsi', 'flags'] as const) off('kvm_irqfd', f, Irqfd[f]);
for (const [f, o] of [['size', SchedAttr.sizeField], ['sched_policy', SchedAttr.policy], ['sched_flags', SchedAttr.flags], ['sched_nice', SchedAttr.nice], ['sched_priority', SchedAttr.priority]] as const) off('sched_attr', f, o);
size('kvm_enable_cap', EnableCap.size);
for (const f of ['cap', 'flags', 'args'] as const) off('kvm_enable_cap', f, EnableCap[f]);
size('kvm_irq_level', IrqLevel.size);
off('kvm_irq_level', 'irq', IrqLevel.irq);
off('kvm_irq_level', 'level', IrqLevel.level);
size('kvm_ioeventfd', Ioeventfd.size);
for (const f of ['datamatch', 'addr', 'len', 'fd', 'flags'] as const) off('kvm_ioeventfd', f, Ioeventfd[f]);
size('kvm_lapic_state', Lapic.size);
size('kvm_fpu', Fpu.size);
off('kvm_fpu', 'fcw', Fpu.fcw);
off('kvm_fpu', 'mxcsr', Fpu.mxcsr);

/** Compiles and runs the probe once; returns C expression → value from the header. */
function probe(exprs: string[]): Map<string, number> {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-abi-'));
  try {
    const lines = exprs.map((e) => `  printf("%llu\\n", (unsigned long long)(${e}));`).join('\n');
    const src = `#include <stddef.h>\n#include <stdio.h>\n#include <linux/kvm.h>\n#include <linux/sched.h>\n#include <linux/sched/types.h>\nint main(void) {\n${lines}\n  return 0;\n}\n`;
    writeFileSync(join(dir, 'abi.c'), src);
    execFileSync('gcc', ['-Wall', '-Werror', '-o', join(dir, 'abi'), join(dir, 'abi.c')], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out = execFileSync(join(dir, 'abi'), { encoding: 'utf8' }).trim().split('\n');
    assert.is(out.length, exprs.length, 'one output line per expression');
    return new Map(exprs.map((e, i) => [e, Number(out[i])]));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('every ioctl number, capability, exit reason, size and offset matches <linux/kvm.h>', () => {
  const exprs = [...expected.keys()];
  const actual = probe(exprs);
  const wrong = exprs.filter((e) => actual.get(e) !== expected.get(e))
    .map((e) => `${e}: header ${actual.get(e)} (0x${actual.get(e)?.toString(16)}), tsvmm ${expected.get(e)} (0x${expected.get(e)?.toString(16)})`);
  assert.equal(wrong, []);
  assert.ok(exprs.length > 100, `checked ${exprs.length} values`);
});

test('ioc() encodes dir/size/type/nr like _IOR/_IOW/_IOWR, unsigned', () => {
  // Values from the kernel headers, written out (and printed by the probe above).
  assert.is(ioc(0, 0xae, 0x80, 0), 0xae80); // KVM_RUN = _IO(0xAE, 0x80)
  assert.is(ioc(2, 0xae, 0x81, 144), 0x8090ae81); // KVM_GET_REGS = _IOR(.., struct kvm_regs)
  assert.is(ioc(1, 0xae, 0x82, 144), 0x4090ae82); // KVM_SET_REGS = _IOW
  assert.is(ioc(3, 0xae, 0x05, 8), 0xc008ae05); // KVM_GET_SUPPORTED_CPUID = _IOWR
  assert.is(ioc(1, 0xae, 0x46, 32), 0x4020ae46); // KVM_SET_USER_MEMORY_REGION
  assert.is(ioc(2, 0x54, 0x13, 8), 0x80085413); // TIOCGWINSZ-like: another type byte
  assert.ok(ioc(2, 0xae, 0x81, 144) > 0, 'never sign-extended');
});

test('exitReasonName names known reasons and numbers unknown ones', async () => {
  const { exitReasonName } = await import('../../../kvm/layout');
  assert.is(exitReasonName(2), 'IO');
  assert.is(exitReasonName(24), 'SYSTEM_EVENT');
  assert.is(exitReasonName(99), 'exit 99');
});

test.run();
