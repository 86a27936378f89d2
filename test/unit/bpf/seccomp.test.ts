// The seccomp filter builder (bpf/seccomp.ts): syscall numbers against <sys/syscall.h>, the
// program's bytes, and its verdicts run through the same semantics the kernel applies.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  AUDIT_ARCH_X86_64, buildFilter, runFilter, SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_LOG,
  SeccompError, SYSCALLS_X86_64, X32_SYSCALL_BIT,
} from '../../../bpf/seccomp';
import { KVM } from '../../../kvm/ioctl';
import { vcpuFilter } from '../../../vmm/vcpu/seccomp';
import { blockThreadFilter } from '../../../devices/virtio/block/seccomp';
import { TAKEOVER_CALLS, WORKER_ALLOWED } from '../../../bpf/seccomp-worker';

test('syscall numbers match <sys/syscall.h>', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-sys-'));
  try {
    const names = Object.keys(SYSCALLS_X86_64);
    writeFileSync(join(dir, 'n.c'), `#include <stdio.h>\n#include <sys/syscall.h>\nint main(void){\n${names.map((n) => `printf("${n} %d\\n", (int)SYS_${n});`).join('\n')}\nreturn 0;}\n`);
    execFileSync('gcc', ['-o', join(dir, 'n'), join(dir, 'n.c')]);
    const got = Object.fromEntries(execFileSync(join(dir, 'n'), { encoding: 'utf8' }).trim().split('\n').map((l) => { const [n, v] = l.split(' '); return [n!, Number(v)]; }));
    assert.equal(got, { ...SYSCALLS_X86_64 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('program bytes: arch check first, x32 refused, one block per syscall, default last', () => {
  const f = buildFilter({ allow: [{ name: 'read' }], deny: ['execve'], defaultAction: { kind: 'errno', errno: 1 } });
  const hex = Buffer.from(f).toString('hex').match(/.{16}/g)!;
  assert.equal(hex, [
    '2000000004000000', // ld [arch]
    '150001003e0000c0', // jeq AUDIT_ARCH_X86_64, +1
    '0600000000000080', // ret KILL_PROCESS
    '2000000000000000', // ld [nr]
    '4500000100000040', // jset 0x40000000, +0, +1
    '0600000000000080', // ret KILL_PROCESS
    '2000000000000000', '1500000100000000', '060000000000ff7f', // read -> ALLOW
    '2000000000000000', '150000013b000000', '0600000000000080', // execve -> KILL_PROCESS
    '0600000001000500', // ret ERRNO(1)
  ]);
});

test('the vCPU policy: verdicts for allowed, argument-checked, denied, unknown, foreign-ABI calls', () => {
  const f = vcpuFilter(17, KVM.RUN);
  const nr = (n: keyof typeof SYSCALLS_X86_64) => SYSCALLS_X86_64[n];
  for (const a of WORKER_ALLOWED) assert.is(runFilter(f, { nr: nr(a.name) }), SECCOMP_RET_ALLOW, a.name);
  for (const d of TAKEOVER_CALLS) assert.is(runFilter(f, { nr: nr(d) }), SECCOMP_RET_KILL_PROCESS, d);
  assert.is(runFilter(f, { nr: nr('ioctl'), args: [17n, BigInt(KVM.RUN)] }), SECCOMP_RET_ALLOW);
  assert.is(runFilter(f, { nr: nr('ioctl'), args: [18n, BigInt(KVM.RUN)] }), SECCOMP_RET_ERRNO | 1);
  assert.is(runFilter(f, { nr: nr('ioctl'), args: [17n, BigInt(KVM.RUN) | (1n << 32n)] }), SECCOMP_RET_ERRNO | 1, 'high half checked');
  assert.is(runFilter(f, { nr: nr('ioctl'), args: [17n, 0x541bn] }), SECCOMP_RET_ERRNO | 1);
  assert.is(runFilter(f, { nr: 102 /* getuid */ }), SECCOMP_RET_ERRNO | 1);
  assert.is(runFilter(f, { nr: 999 }), SECCOMP_RET_ERRNO | 1);
  assert.is(runFilter(f, { nr: nr('read'), arch: 0x40000003 /* i386 */ }), SECCOMP_RET_KILL_PROCESS);
  assert.is(runFilter(f, { nr: nr('read') | X32_SYSCALL_BIT, arch: AUDIT_ARCH_X86_64 }), SECCOMP_RET_KILL_PROCESS);
  // The measuring mode logs instead of refusing.
  const log = vcpuFilter(17, KVM.RUN, 'log');
  assert.is(runFilter(log, { nr: 102 }), SECCOMP_RET_LOG);
  assert.is(runFilter(log, { nr: nr('execve') }), SECCOMP_RET_LOG);
  assert.is(runFilter(log, { nr: nr('futex') }), SECCOMP_RET_ALLOW);
});

test('the block I/O thread\'s policy: its image and its ring only, no open, no KVM', () => {
  const nr = (n: keyof typeof SYSCALLS_X86_64) => SYSCALLS_X86_64[n];
  const f = blockThreadFilter(21, 22);
  for (const a of WORKER_ALLOWED) assert.is(runFilter(f, { nr: nr(a.name) }), SECCOMP_RET_ALLOW, a.name);
  for (const d of TAKEOVER_CALLS) assert.is(runFilter(f, { nr: nr(d) }), SECCOMP_RET_KILL_PROCESS, d);
  for (const c of ['pread64', 'preadv', 'pwrite64', 'pwritev', 'fdatasync'] as const) {
    assert.is(runFilter(f, { nr: nr(c), args: [21n] }), SECCOMP_RET_ALLOW, `${c} on the image`);
    assert.is(runFilter(f, { nr: nr(c), args: [22n] }), SECCOMP_RET_ERRNO | 1, `${c} on another fd`);
  }
  assert.is(runFilter(f, { nr: nr('io_uring_enter'), args: [22n] }), SECCOMP_RET_ALLOW);
  assert.is(runFilter(f, { nr: nr('io_uring_enter'), args: [21n] }), SECCOMP_RET_ERRNO | 1, 'another ring');
  assert.is(runFilter(f, { nr: nr('io_uring_register'), args: [22n] }), SECCOMP_RET_KILL_PROCESS, 'the lockdown is not undone');
  assert.is(runFilter(f, { nr: nr('ioctl'), args: [17n, BigInt(KVM.RUN)] }), SECCOMP_RET_ERRNO | 1);
  // Synchronous I/O (no ring): io_uring_enter is refused outright.
  assert.is(runFilter(blockThreadFilter(21, undefined), { nr: nr('io_uring_enter'), args: [22n] }), SECCOMP_RET_ERRNO | 1);
});

test('bad policies are refused', () => {
  assert.throws(() => buildFilter({ allow: [{ name: 'read' }, { name: 'read' }], defaultAction: { kind: 'allow' } }), (e: unknown) => e instanceof SeccompError && /named twice/.test((e as Error).message));
  assert.throws(() => buildFilter({ allow: [{ name: 'nope' as 'read' }], defaultAction: { kind: 'allow' } }), /unknown syscall nope/);
  assert.throws(() => buildFilter({ allow: [], defaultAction: { kind: 'errno', errno: 0 } }), /errno 0 out of 1..4095/);
});

test.run();
