// The built-in hint programs are hand-assembled without CO-RE: every kernel offset they read is a
// constant (bpf/programs/prio.ts, affinity.ts) that must hold on both kernels the issue names,
// Debian's 6.1 (the default guest) and 6.12 (the cloud kernel tools/setup.sh fetches). This
// reads both kernels' own type information (the .BTF section of the unpacked vmlinux ELF) and
// checks each constant against it: tracepoint records (trace_event_raw_*, syscall_trace_*), the
// kprobe's pt_regs, task_struct → thread_info.cpu, uapi sched_attr, and that the kprobe target
// is a real (not inlined) function taking (p, attr). The guest kernels run the programs in
// test/integration/research.test.ts (6.1); this is what says 6.12 reads the same bytes.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { cacheDir } from '../../../vmm/cache';
import { ATTR, REGS, TASK_CPU, TP as PRIO_TP } from '../../../bpf/programs/prio';
import { TP as AFF_TP } from '../../../bpf/programs/affinity';
import { prioPackage } from '../../../bpf/programs/prio';
import { affinityPackage } from '../../../bpf/programs/affinity';
import { needs } from '../../needs';

/** Bytes [off, off + len) of a file, without reading the rest (a vmlinux is ~60 MB). */
function pread(fd: number, off: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  if (readSync(fd, b, 0, len, off) !== len) throw new Error(`short read at ${off}`);
  return b;
}

/** The .BTF section of a 64-bit little-endian ELF. */
function elfBtf(path: string): Buffer {
  const fd = openSync(path, 'r');
  try {
    const eh = pread(fd, 0, 64);
    assert.is(eh.readUInt32BE(0), 0x7f454c46, `${path} is an ELF`);
    const shoff = Number(eh.readBigUInt64LE(0x28)), shentsize = eh.readUInt16LE(0x3a), shnum = eh.readUInt16LE(0x3c), shstrndx = eh.readUInt16LE(0x3e);
    const sh = pread(fd, shoff, shentsize * shnum);
    const sec = (i: number) => ({ name: sh.readUInt32LE(i * shentsize), off: Number(sh.readBigUInt64LE(i * shentsize + 0x18)), size: Number(sh.readBigUInt64LE(i * shentsize + 0x20)) });
    const strs = sec(shstrndx);
    const names = pread(fd, strs.off, strs.size);
    for (let i = 0; i < shnum; i++) {
      const s = sec(i);
      if (names.toString('latin1', s.name, names.indexOf(0, s.name)) === '.BTF') return pread(fd, s.off, s.size);
    }
    throw new Error(`${path} has no .BTF section`);
  } finally {
    closeSync(fd);
  }
}

interface BtfType { kind: number; name: string; sizeOrType: number; members: { name: string; type: number; bitOffset: number }[] }
const STRUCT = 4, UNION = 5, FUNC = 12, FUNC_PROTO = 13, TYPEDEF = 8;

/** Every type of a BTF blob (<linux/btf.h>), enough to follow struct members and function prototypes. */
function parseBtf(btf: Buffer): BtfType[] {
  assert.is(btf.readUInt16LE(0), 0xeb9f, 'BTF magic');
  const hdrLen = btf.readUInt32LE(4), typeOff = hdrLen + btf.readUInt32LE(8), typeLen = btf.readUInt32LE(12), strOff = hdrLen + btf.readUInt32LE(16);
  const str = (o: number) => btf.toString('latin1', strOff + o, btf.indexOf(0, strOff + o));
  const types: BtfType[] = [{ kind: 0, name: 'void', sizeOrType: 0, members: [] }];
  for (let o = typeOff; o < typeOff + typeLen;) {
    const info = btf.readUInt32LE(o + 4), kind = (info >>> 24) & 0x1f, vlen = info & 0xffff, kflag = info >>> 31;
    const t: BtfType = { kind, name: str(btf.readUInt32LE(o)), sizeOrType: btf.readUInt32LE(o + 8), members: [] };
    o += 12;
    switch (kind) {
      case STRUCT: case UNION:
        for (let i = 0; i < vlen; i++, o += 12) {
          const off = btf.readUInt32LE(o + 8);
          t.members.push({ name: str(btf.readUInt32LE(o)), type: btf.readUInt32LE(o + 4), bitOffset: kflag ? off & 0xffffff : off });
        }
        break;
      case FUNC_PROTO:
        for (let i = 0; i < vlen; i++, o += 8) t.members.push({ name: str(btf.readUInt32LE(o)), type: btf.readUInt32LE(o + 4), bitOffset: 0 });
        break;
      case 1: case 14: case 17: o += 4; break;                  // INT, VAR, DECL_TAG
      case 3: o += 12; break;                                   // ARRAY
      case 6: o += 8 * vlen; break;                             // ENUM
      case 15: case 19: o += 12 * vlen; break;                  // DATASEC, ENUM64
      case 2: case 7: case TYPEDEF: case 9: case 10: case 11: case FUNC: case 16: case 18: break;
      default: throw new Error(`BTF kind ${kind} unknown`);
    }
    types.push(t);
  }
  return types;
}

class KernelTypes {
  readonly types: BtfType[];
  constructor(readonly release: string, vmlinux: string) {
    this.types = parseBtf(elfBtf(vmlinux));
  }
  private named(kind: number, name: string): BtfType {
    const t = this.types.filter((x) => x.kind === kind && x.name === name && (kind !== STRUCT || x.members.length > 0));
    assert.is(t.length > 0, true, `${this.release}: no ${kind === FUNC ? 'function' : 'struct'} ${name} in its BTF`);
    return t[0]!;
  }
  /** The byte offset of `struct s`'s member `path` ('a.b': a member of a member). */
  offset(s: string, path: string): number {
    let t = this.named(STRUCT, s);
    let bits = 0;
    for (const part of path.split('.')) {
      const m = t.members.find((x) => x.name === part);
      assert.ok(m, `${this.release}: struct ${t.name} has no member ${part}`);
      bits += m!.bitOffset;
      t = this.types[m!.type]!;
      while (t.kind === TYPEDEF || (t.kind >= 9 && t.kind <= 11)) t = this.types[t.sizeOrType]!;
    }
    assert.is(bits % 8, 0, `${s}.${path} is a bit field`);
    return bits / 8;
  }
  /** The parameter names of a function that exists as a function of its own (BTF FUNC: not inlined away). */
  params(fn: string): string[] {
    return this.types[this.named(FUNC, fn).sizeOrType]!.members.map((m) => m.name);
  }
}

/** The unpacked ELF kernels of the cache: Debian 6.1 (the default guest) and 6.12 cloud. */
function kernels(): { release: string; vmlinux: string }[] {
  const dir = join(cacheDir(), 'kernel');
  if (!existsSync(dir)) return [];
  return readdirSync(dir).flatMap((e) => {
    const f = join(dir, e, 'kernel.json');
    const r = existsSync(f) ? (JSON.parse(readFileSync(f, 'utf8')) as { version?: string; vmlinux?: string }) : null;
    return r?.version && r.vmlinux && existsSync(r.vmlinux) ? [{ release: r.version, vmlinux: r.vmlinux }] : [];
  }).concat((() => {
    const f = join(dir, 'kernel.json'); // the default kernel's record sits at the top
    const r = existsSync(f) ? (JSON.parse(readFileSync(f, 'utf8')) as { version?: string; vmlinux?: string }) : null;
    return r?.version && r.vmlinux && existsSync(r.vmlinux) ? [{ release: r.version, vmlinux: r.vmlinux }] : [];
  })()).filter((k, i, all) => all.findIndex((x) => x.release === k.release) === i);
}

const found = kernels();
const want = [/^6\.1\.\d+-\d+-amd64$/, /^6\.12\.\d+\+deb\d+-cloud-amd64$/];
const chosen = want.map((re) => found.find((k) => re.test(k.release)));
const it = needs(chosen.every(Boolean) ? undefined
  : `needs Debian's 6.1 and 6.12 kernels unpacked in the cache (have: ${found.map((k) => k.release).join(', ') || 'none'}): tools/guest/fetch-kernel.sh and --package 'linux-image-6.12.*-cloud-amd64-unsigned' (tools/setup.sh runs both)`);

it('prio and affinity read the same bytes on Debian 6.1 and 6.12: every offset against the kernel\'s own BTF', () => {
  for (const k of chosen.map((c) => new KernelTypes(c!.release, c!.vmlinux))) {
    // The kprobe: __sched_setscheduler(p, attr, ...) exists on its own; its first two arguments are di and si.
    assert.equal(k.params('__sched_setscheduler').slice(0, 2), ['p', 'attr'], k.release);
    assert.is(k.offset('pt_regs', 'di'), REGS.di, `${k.release} pt_regs.di`);
    assert.is(k.offset('pt_regs', 'si'), REGS.si, `${k.release} pt_regs.si`);
    // task_thread_info(p)->cpu: thread_info first in task_struct, cpu inside it.
    assert.is(k.offset('task_struct', 'thread_info.cpu'), TASK_CPU, `${k.release} task_struct.thread_info.cpu`);
    assert.is(k.offset('sched_attr', 'sched_policy'), ATTR.policy, `${k.release} sched_attr.sched_policy`);
    assert.is(k.offset('sched_attr', 'sched_priority'), ATTR.priority, `${k.release} sched_attr.sched_priority`);
    // Syscall tracepoints: args[0] and ret after the 8-byte trace_entry and the syscall number.
    assert.is(k.offset('syscall_trace_enter', 'args'), PRIO_TP.sysArg0, `${k.release} sys_enter args`);
    assert.is(k.offset('syscall_trace_exit', 'ret'), PRIO_TP.sysRet, `${k.release} sys_exit ret`);
    assert.is(k.offset('syscall_trace_enter', 'args'), AFF_TP.enterPid, `${k.release} sched_setaffinity pid`);
    assert.is(AFF_TP.enterLen - AFF_TP.enterPid, 8, 'len is args[1]');
    assert.is(AFF_TP.enterMaskPtr - AFF_TP.enterPid, 16, 'user_mask_ptr is args[2]');
    assert.is(k.offset('syscall_trace_exit', 'ret'), AFF_TP.exitRet, `${k.release} sched_setaffinity ret`);
    // sched tracepoints, each program's event through its class's record.
    assert.is(k.offset('trace_event_raw_sched_migrate_task', 'pid'), PRIO_TP.pid, `${k.release} sched_migrate_task.pid`);
    assert.is(k.offset('trace_event_raw_sched_migrate_task', 'dest_cpu'), PRIO_TP.migrateDest, `${k.release} sched_migrate_task.dest_cpu`);
    assert.is(k.offset('trace_event_raw_sched_process_template', 'pid'), PRIO_TP.pid, `${k.release} sched_process_exit.pid`);
    assert.is(k.offset('trace_event_raw_sched_process_template', 'pid'), AFF_TP.taskExitPid, `${k.release} sched_process_exit.pid`);
    assert.is(k.offset('trace_event_raw_sched_wakeup_template', 'pid'), PRIO_TP.pid, `${k.release} sched_wakeup_new.pid`);
    assert.is(k.offset('trace_event_raw_sched_wakeup_template', 'prio'), PRIO_TP.wakeupPrio, `${k.release} sched_wakeup_new.prio`);
    assert.is(k.offset('trace_event_raw_sched_wakeup_template', 'target_cpu'), PRIO_TP.wakeupCpu, `${k.release} sched_wakeup_new.target_cpu`);
    assert.is(k.offset('trace_event_raw_sched_process_fork', 'child_comm'), AFF_TP.forkChildComm, `${k.release} sched_process_fork.child_comm`);
    assert.is(k.offset('trace_event_raw_sched_process_fork', 'child_pid'), AFF_TP.forkChildPid, `${k.release} sched_process_fork.child_pid`);
  }
  // The programs attach where the offsets above were checked.
  const targets = [...prioPackage().programs, ...affinityPackage().programs].map((g) => g.attach.target);
  for (const t of ['__sched_setscheduler', 'sched/sched_migrate_task', 'sched/sched_process_exit', 'sched/sched_wakeup_new', 'sched/sched_process_fork']) {
    assert.ok(targets.includes(t), t);
  }
});

test.run();
