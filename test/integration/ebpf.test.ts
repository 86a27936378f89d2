// eBPF in the running kernel, with no VM. The agent's eBPF side against the real
// HypercallDevice: packages from bpf/ are loaded with raw bpf(2), attached to tracepoints, and
// their hint records come back through the device, one register write per batch. And the
// affinity package through a plain C loader (test/unit/bpf/fixtures/pkgload.c), independent of
// the agent. Needs root, bpf(2) and tracefs, which the sandbox gives (tools/sandbox/init.sh
// mounts tracefs): an integration test for that reason only; it boots no guest.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeHints, HintType, type Hint } from '../../bpf/hints';
import { serializePackage, type Package } from '../../bpf/package';
import { affinityPackage } from '../../bpf/programs/affinity';
import { Caps, type LostProgram, type PackageBytes } from '../../devices/hypercall';
import { HYPERCALL_SHMEM_SIZE as HC_SHM_SIZE } from '../../vmm/layout';
import { withTimeout } from '../unit/agent/harness';
import { startRig, type Rig } from '../unit/agent/hcrig';
import { FIXTURES, tmp } from '../unit/bpf/util';
import { firstMissing, missingCommand, needs } from '../needs';

const ebpfTest = needs(firstMissing(
  process.getuid?.() === 0 ? undefined : 'needs root (bpf(2) and tracepoints)',
  existsSync('/sys/kernel/tracing/events/syscalls/sys_enter_sched_setaffinity') ? undefined : 'needs tracefs with syscall tracepoints at /sys/kernel/tracing',
  missingCommand('taskset', 'gcc'),
));

function bytesOf(pkg: Package): PackageBytes {
  const bytes = serializePackage(pkg);
  return { id: pkg.name, digest: bytes.subarray(bytes.length - 32), bytes };
}
const hexOf = (p: PackageBytes): string => Buffer.from(p.digest).toString('hex');

/** A program the verifier refuses: it exits without setting r0. */
function badPackage(): Package {
  const exit = new Uint8Array([0x95, 0, 0, 0, 0, 0, 0, 0]);
  return {
    name: 'bad-exit',
    license: 'GPL',
    maps: [],
    hintMap: null,
    programs: [{ name: 'no_r0', attach: { kind: 'tracepoint', target: 'sched/sched_process_exit' }, insns: exit, relocations: [] }],
  };
}

/** Program ids held open by process `pid` (from its fdinfo), to see what is really loaded. */
function heldProgIds(pid: number): Set<number> {
  const ids = new Set<number>();
  for (const fd of readdirSync(`/proc/${pid}/fdinfo`)) {
    try {
      const m = /prog_id:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'));
      if (m) ids.add(Number(m[1]));
    } catch {
      // fd closed meanwhile
    }
  }
  return ids;
}

async function until<T>(what: string, f: () => T | undefined, ms = 5000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function collectHints(rig: Rig): Hint[] {
  const got: Hint[] = [];
  for (const t of [HintType.AFFINITY, HintType.UNPIN]) rig.dev.onHints(t, (rec) => got.push(...decodeHints(rec)));
  return got;
}

/** Runs `taskset -c 0 true`: one sched_setaffinity on the taskset process, then its exit. */
function pinOnce(): number {
  const r = spawnSync('taskset', ['-c', '0', 'true']);
  assert.is(r.status, 0);
  return r.pid!;
}

ebpfTest('affinity package: load, attach, hints in batches, unload', async () => {
  const rig = await startRig();
  try {
    await until('policy log line', () => (/no allow list/.test(rig.log()) ? true : undefined));
    const pkg = bytesOf(affinityPackage());
    const res = await rig.dev.submit({ op: 'load', pkg });
    assert.is(res.outcome, 'OK', res.text);
    assert.is(res.progIds.length, 4);
    const agentPid = rig.dev.agent!.pid;
    const held = heldProgIds(agentPid);
    for (const id of res.progIds) assert.ok(held.has(id), `prog ${id} is held by the agent`);

    const hints = collectHints(rig);
    // The REPORT's STATUS/RESULT reads reach the device after submit() resolved: let them land.
    await new Promise((r) => setTimeout(r, 100));
    const before = { ...rig.regs };
    const c0 = rig.dev.counters();
    const pid = pinOnce();
    const aff = await until('AFFINITY hint', () => hints.find((h) => h.type === 'AFFINITY' && h.tid === pid));
    assert.equal(aff.type === 'AFFINITY' && aff.cpus, [0]);
    assert.is(aff.type === 'AFFINITY' && aff.comm, 'taskset');
    await until('UNPIN hint', () => hints.find((h) => h.type === 'UNPIN' && h.tid === pid));
    // One COMMAND write per batch and no register read on that path: one exit per batch.
    const c = rig.dev.counters();
    assert.ok(c.hintBatches >= 1);
    assert.is(c.calls.HINTS, c.hintBatches);
    // (A late doorbell byte may add a FETCH: a write and two reads.)
    const fetches = c.calls.FETCH - c0.calls.FETCH;
    assert.is(rig.regs.writes - before.writes, c.calls.HINTS - c0.calls.HINTS + fetches);
    assert.is(rig.regs.reads - before.reads, 2 * fetches);
    assert.is(c.hintDropped, 0);

    const un = await rig.dev.submit({ op: 'unload', handle: res.handle });
    assert.is(un.outcome, 'OK');
    const after = heldProgIds(agentPid);
    for (const id of res.progIds) assert.not.ok(after.has(id), `prog ${id} was released`);
    const n = hints.length;
    const pid2 = pinOnce();
    await new Promise((r) => setTimeout(r, 300));
    assert.not.ok(hints.slice(n).some((h) => h.type !== 'UNKNOWN' && h.tid === pid2), 'no hints after unload');
  } finally {
    await rig.stop();
  }
});

ebpfTest('two packages: every record says which one it came from (SOURCE records)', async () => {
  const rig = await startRig();
  try {
    assert.ok((rig.dev.agent!.caps & Caps.HINT_SOURCE) !== 0, 'HELLO announces HINT_SOURCE');
    const one = await rig.dev.submit({ op: 'load', pkg: bytesOf(affinityPackage()) });
    const two = await rig.dev.submit({ op: 'load', pkg: bytesOf({ ...affinityPackage(), name: 'affinity-2' }) });
    assert.is(two.outcome, 'OK', two.text);
    // Both packages see every sched_setaffinity: each AFFINITY record arrives once per ring.
    const got: { tid: number; source: number | undefined }[] = [];
    rig.dev.onHints(HintType.AFFINITY, (rec, _t, source) => {
      for (const h of decodeHints(rec)) if (h.type === 'AFFINITY') got.push({ tid: h.tid, source });
    });
    const pid = pinOnce();
    const from = () => got.filter((g) => g.tid === pid).map((g) => g.source).sort();
    await until('AFFINITY from both rings', () => (from().length === 2 ? true : undefined));
    assert.equal(from(), [one.handle, two.handle].sort());
    await rig.dev.submit({ op: 'unload', handle: one.handle });
    const pid2 = pinOnce();
    await until('AFFINITY of the second pin', () => (got.some((g) => g.tid === pid2) ? true : undefined));
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(got.filter((g) => g.tid === pid2).map((g) => g.source), [two.handle]);
    const c = rig.dev.counters();
    assert.is(c.hintUnattributed, 0);
    assert.is(c.hintDropped, 0);
  } finally {
    await rig.stop();
  }
});

ebpfTest('a verifier failure reports the log; REPLACE keeps the old programs until the new ones load', async () => {
  const rig = await startRig();
  try {
    const first = await rig.dev.submit({ op: 'load', pkg: bytesOf(affinityPackage()) });
    assert.is(first.outcome, 'OK', first.text);
    const bad = await rig.dev.submit({ op: 'replace', handle: first.handle, pkg: bytesOf(badPackage()) });
    assert.is(bad.outcome, 'VERIFIER');
    assert.is(bad.errno, 13); // EACCES
    assert.match(bad.text, /R0 !read_ok/);
    assert.equal(bad.progIds, []);
    const pid = rig.dev.agent!.pid;
    for (const id of first.progIds) assert.ok(heldProgIds(pid).has(id), 'old programs still loaded');

    const again = await rig.dev.submit({ op: 'replace', handle: first.handle, pkg: bytesOf(affinityPackage()) });
    assert.is(again.outcome, 'OK', again.text);
    const held = heldProgIds(pid);
    for (const id of again.progIds) assert.ok(held.has(id));
    for (const id of first.progIds) assert.not.ok(held.has(id), 'replaced programs are gone');

    const plain = await rig.dev.submit({ op: 'load', pkg: bytesOf(badPackage()) });
    assert.is(plain.outcome, 'VERIFIER');
  } finally {
    await rig.stop();
  }
});

/** One trivial program (r0 = 0; exit) per attach point. */
function trivialPackage(name: string, points: Array<{ kind: 'raw_tracepoint' | 'fentry' | 'fexit' | 'kprobe' | 'kretprobe' | 'tracepoint'; target: string }>): Package {
  const insns = new Uint8Array([0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0]);
  return {
    name,
    license: 'GPL',
    maps: [],
    hintMap: null,
    programs: points.map((attach, i) => ({ name: `p${i}_${attach.kind}`, attach, insns, relocations: [] })),
  };
}

// (fentry/fexit are not loaded here: this host's kernel refuses every tracing program
// with EPERM; only the BTF lookup failing for a missing function is checked.)
ebpfTest('raw tracepoints attach; a missing attach point fails cleanly', async () => {
  const rig = await startRig();
  try {
    const ok = await rig.dev.submit({
      op: 'load',
      pkg: bytesOf(trivialPackage('attach-kinds', [
        { kind: 'raw_tracepoint', target: 'sched_switch' },
        { kind: 'raw_tracepoint', target: 'sys_enter' },
      ])),
    });
    assert.is(ok.outcome, 'OK', ok.text.slice(-600));
    assert.is(ok.progIds.length, 2);
    const held = heldProgIds(rig.dev.agent!.pid);
    for (const id of ok.progIds) assert.ok(held.has(id));

    const missing = await rig.dev.submit({ op: 'load', pkg: bytesOf(trivialPackage('nowhere', [{ kind: 'tracepoint', target: 'nosuchcat/nosuchevent' }])) });
    assert.is(missing.outcome, 'FAILED');
    assert.is(missing.errno, 2);
    assert.match(missing.text, /nosuchcat\/nosuchevent/);
    const nofn = await rig.dev.submit({ op: 'load', pkg: bytesOf(trivialPackage('nofn', [{ kind: 'fentry', target: 'no_such_kernel_function_x' }])) });
    assert.is(nofn.outcome, 'FAILED');
    assert.match(nofn.text, /no_such_kernel_function_x/);
    const noraw = await rig.dev.submit({ op: 'load', pkg: bytesOf(trivialPackage('noraw', [{ kind: 'raw_tracepoint', target: 'no_such_tp' }])) });
    assert.is(noraw.outcome, 'FAILED');
    assert.match(noraw.text, /BPF_RAW_TRACEPOINT_OPEN/);
  } finally {
    await rig.stop();
  }
});

ebpfTest('a killed eBPF side is restarted, says HELLO again, and the host learns what was lost', async () => {
  const rig = await startRig();
  try {
    const res = await rig.dev.submit({ op: 'load', pkg: bytesOf(affinityPackage()) });
    assert.is(res.outcome, 'OK', res.text);
    const first = rig.dev.agent!;
    const hello = new Promise<readonly LostProgram[]>((r) => rig.dev.onAgentHello((_info, lost) => r(lost)));
    process.kill(first.pid, 'SIGKILL');
    const lost = await withTimeout(hello, 10_000, 'second HELLO');
    assert.is(lost.length, 1);
    assert.is(lost[0].handle, res.handle);
    assert.equal([...lost[0].progIds], res.progIds);
    assert.is.not(rig.dev.agent!.pid, first.pid);
    assert.is(rig.dev.agent!.session, first.session + 1);
    const again = await rig.dev.submit({ op: 'load', pkg: bytesOf(affinityPackage()) });
    assert.is(again.outcome, 'OK', again.text);
    assert.match(rig.log(), /restarting in 1 s/);
    assert.ok(rig.bell.rings >= 2, 'the doorbell reconnected to the new agent');
  } finally {
    await rig.stop();
  }
});

ebpfTest('a verifier log longer than the mailbox keeps its end', async () => {
  const rig = await startRig();
  try {
    // 60000 x "r0 = 0", then "r0 = r2" (r2 never written): the verifier logs every
    // instruction (megabytes) and fails at the very end.
    const n = 60000;
    const insns = new Uint8Array(8 * (n + 2));
    for (let i = 0; i < n; i++) insns[8 * i] = 0xb7;
    insns.set([0xbf, 0x20, 0, 0, 0, 0, 0, 0], 8 * n); // mov r0, r2
    insns[8 * (n + 1)] = 0x95;
    const pkg: Package = { name: 'long-log', license: 'GPL', maps: [], hintMap: null, programs: [{ name: 'long', attach: { kind: 'tracepoint', target: 'sched/sched_process_exit' }, insns, relocations: [] }] };
    const r = await rig.dev.submit({ op: 'load', pkg: bytesOf(pkg) });
    assert.is(r.outcome, 'VERIFIER');
    assert.match(r.text, /R2 !read_ok/);
    assert.ok(r.text.length > 100_000, `log of ${r.text.length} bytes`);
    assert.ok(r.text.length <= (HC_SHM_SIZE - 0x1000) / 2 - 0x18, 'fits the mailbox');
    assert.not.match(r.text, /^long: BPF_PROG_LOAD/, 'the beginning was dropped');
  } finally {
    await rig.stop();
  }
});

ebpfTest('hints survive the host rate limit (E_RATE: wait, retry, lose nothing)', async () => {
  // One command a second (burst 1): the hints of 40 quick pins need more, on any machine speed.
  const rig = await startRig({ ratePerSecond: 1 });
  try {
    const res = await rig.dev.submit({ op: 'load', pkg: bytesOf(affinityPackage()) });
    assert.is(res.outcome, 'OK', res.text);
    const hints = collectHints(rig);
    const pids: number[] = [];
    for (let i = 0; i < 40; i++) {
      pids.push(pinOnce());
      await new Promise((r) => setTimeout(r, 5));
    }
    for (const pid of pids) await until(`AFFINITY of ${pid}`, () => hints.find((h) => h.type === 'AFFINITY' && h.tid === pid), 15_000);
    const c = rig.dev.counters();
    assert.ok(c.errors.E_RATE > 0, 'the rate limit was hit');
    assert.is(c.hintDropped, 0);
  } finally {
    await rig.stop();
  }
});

ebpfTest('a corrupted package is BADPKG', async () => {
  const rig = await startRig();
  try {
    const good = bytesOf(affinityPackage());
    const bytes = new Uint8Array(good.bytes);
    bytes[200] ^= 0x40; // inside a map record, digest left as it was
    const r = await rig.dev.submit({ op: 'load', pkg: { ...good, bytes } });
    assert.is(r.outcome, 'BADPKG');
    assert.match(r.text, /digest/);
  } finally {
    await rig.stop();
  }
});

ebpfTest('the guest policy refuses digests outside its allow list, from a file or the command line', async () => {
  const pkg = bytesOf(affinityPackage());
  const other = 'ab'.repeat(32);
  const allowFile = join(process.env.TMPDIR ?? '/tmp', `tsvmm-allow-${process.pid}`);
  writeFileSync(allowFile, `# only this one\n${other}\n`);
  let rig = await startRig({ allowFile });
  try {
    assert.ok((rig.dev.agent!.caps & 1) !== 0, 'HELLO announces DIGEST_ALLOWLIST');
    const r = await rig.dev.submit({ op: 'load', pkg });
    assert.is(r.outcome, 'REFUSED');
    assert.ok(r.text.includes(hexOf(pkg)), r.text);
    assert.equal(r.progIds, []);
  } finally {
    await rig.stop();
    rmSync(allowFile, { force: true });
  }
  rig = await startRig({ allowFile: '/nonexistent', cmdline: `quiet tsvmm.allow=${other},${hexOf(pkg)}\n` });
  try {
    const r = await rig.dev.submit({ op: 'load', pkg });
    assert.is(r.outcome, 'OK', r.text);
  } finally {
    await rig.stop();
  }
});

/** Builds the independent C loader (raw bpf(2), no agent) of test/unit/bpf/fixtures. */
function pkgload(): string {
  const bin = tmp('pkgload');
  const r = spawnSync('gcc', ['-O1', '-Wall', '-o', bin, join(FIXTURES, 'pkgload.c'), '-lpthread'], { encoding: 'utf8' });
  assert.is(r.status, 0, `cannot build pkgload.c: ${r.stderr}`);
  writeFileSync(tmp('affinity.pkg'), serializePackage(affinityPackage()));
  return bin;
}

ebpfTest('the kernel verifier accepts every affinity program (loaded by a plain C loader)', () => {
  const r = spawnSync(pkgload(), [tmp('affinity.pkg')], { encoding: 'utf8' });
  assert.is(r.status, 0, `loader failed:\n${r.stdout}${r.stderr}`);
  for (const name of ['affinity_enter', 'affinity_exit', 'affinity_task_exit', 'affinity_fork']) assert.match(r.stdout, `prog ${name} ok`);
});

ebpfTest('attached by the C loader, a sched_setaffinity + thread exit yields AFFINITY then UNPIN', () => {
  const r = spawnSync(pkgload(), [tmp('affinity.pkg'), '--run'], { encoding: 'utf8' });
  assert.is(r.status, 0, `loader failed:\n${r.stdout}${r.stderr}`);
  const self = Number(/tid-self (\d+)/.exec(r.stdout)![1]);
  const records = [...r.stdout.matchAll(/^record ([0-9a-f]+)$/gm)].map((m) => Buffer.from(m[1]!, 'hex'));
  // Other processes may call sched_setaffinity too: keep those of the loader.
  const hints = decodeHints(Buffer.concat(records)).filter((h) => (h.type === 'AFFINITY' || h.type === 'UNPIN') && h.tgid === self);
  assert.is(hints.length, 2, r.stdout);
  const [aff, unpin] = hints;
  assert.ok(aff?.type === 'AFFINITY' && unpin?.type === 'UNPIN', r.stdout);
  if (aff?.type === 'AFFINITY' && unpin?.type === 'UNPIN') {
    assert.equal(aff.cpus, [0]);
    assert.is(aff.comm, 'pkgload');
    assert.is.not(aff.tid, self); // the pinning thread, not the main one
    assert.is(unpin.tid, aff.tid);
  }
});

test.run();
