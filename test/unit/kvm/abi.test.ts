// Checks kvm/ioctl.ts and kvm/layout.ts against the system's <linux/kvm.h> (test/unit/abi.ts):
// every ioctl number, capability, exit reason, and every struct's size, field offsets and
// widths as layout.ts describes them.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { AbiExpectations } from '../abi';
import { KVM, KVM_CAP, ioc } from '../../../kvm/ioctl';
import { SCHED, SchedAttr, SOL_SOCKET, SO_PEERCRED, Ucred } from '../../../kvm/libc';
import {
  ExitReason, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT, KVM_IOEVENTFD_FLAG_DATAMATCH,
  KVM_IOEVENTFD_FLAG_PIO, KVM_PIT_SPEAKER_DUMMY, KVM_STRUCTS, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
  KVM_SYSTEM_EVENT_SHUTDOWN, KvmCpuid2, KvmMsrs, KvmRunIo,
} from '../../../kvm/layout';

const abi = new AbiExpectations();
const want = (cExpr: string, value: number) => abi.want(cExpr, value);

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

// Every struct layout.ts describes (kvm_run's size is the mmap size, not the header's).
for (const s of KVM_STRUCTS) abi.struct(s, { size: s.name !== 'kvm_run' });
// sched_attr as version 0 (SCHED_ATTR_SIZE_VER0, above): the header's struct has grown since.
abi.struct(SchedAttr, { size: false });
// SO_PEERCRED's answer (the API's owner check).
want('SOL_SOCKET', SOL_SOCKET);
want('SO_PEERCRED', SO_PEERCRED);
abi.struct(Ucred);
// The exit union, and where the variable-length entry arrays start.
want('offsetof(struct kvm_run, hw)', KvmRunIo.offsets.direction);
want('offsetof(struct kvm_cpuid2, entries)', KvmCpuid2.size);
want('offsetof(struct kvm_msrs, entries)', KvmMsrs.size);

test('every ioctl number, capability, exit reason, size and offset matches <linux/kvm.h>', () => {
  assert.equal(abi.mismatches(['linux/kvm.h', 'linux/sched.h', 'linux/sched/types.h', 'sys/socket.h']), []);
  assert.ok(abi.count > 200, `checked ${abi.count} values`);
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
