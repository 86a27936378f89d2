// `tsvmm run` as a process, seen from outside: --host-cpus confines every vCPU thread (as /proc
// shows it), `tsvmm ps` lists the VM, `tsvmm metrics` reads live counters, --config-file boots
// the document it is given, --metrics-path appends JSON lines on its interval and once at exit,
// and SIGINT / SIGTERM end it with 130 / 143 after tearing the VM down: no process, socket file
// or `tsvmm ps` entry left. In-process as well: a Machine that ends leaves no vCPU thread and no
// file descriptor behind.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_CMDLINE } from '../../vmm/config';
import { encodeGuestCommand, ensureDefaultGuest } from '../../vmm/default-guest';
import { Machine } from '../../vmm/machine';
import { MiB } from '../../vmm/layout';
import { needs } from '../needs';
import { cpusAllowed } from '../procfs';
import { groupMembers } from '../../tools/test-report.mjs';
import { ROOT, TSVMM, agentOf, tsvmm, until } from './helpers';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-life-'));
// A registry of our own, so `tsvmm ps` sees only this file's VMs.
const env = { ...process.env, XDG_RUNTIME_DIR: join(dir, 'run') };
const pool = cpusAllowed();

interface Vm {
  child: ChildProcess;
  pid: number;
  out: () => string;
  exited: Promise<number | null>;
}

function spawnVm(args: string[]): Vm {
  // Its own process group: whatever it starts can be found (and must be gone) afterwards.
  const child = spawn(process.execPath, [TSVMM, 'run', ...args], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let out = '';
  child.stdout!.on('data', (b) => (out += b));
  child.stderr!.on('data', (b) => (out += b));
  const exited = new Promise<number | null>((r) => child.once('close', (code) => r(code)));
  return { child, pid: child.pid!, out: () => out, exited };
}

/** tid → name of every thread of `pid`. */
function threads(pid: number): Map<number, string> {
  const out = new Map<number, string>();
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      out.set(Number(t), readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trim());
    } catch {
      // the thread ended meanwhile
    }
  }
  return out;
}

const vcpuThreads = (pid: number) => [...threads(pid)].filter(([, name]) => /^tsvmm-vcpu\d+$/.test(name)).sort((a, b) => a[1].localeCompare(b[1]));

async function ps(): Promise<{ id: string; pid: number; api_sock: string | null; vcpus: number | null }[]> {
  const r = await tsvmm(['ps', '--json'], { env });
  assert.is(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as { id: string; pid: number; api_sock: string | null; vcpus: number | null }[];
}

/** Sends `signal`, expects exit status `code` within 60 s, then checks nothing of the VM is left. */
async function endsCleanly(vm: Vm, signal: NodeJS.Signals, code: number, files: string[]): Promise<void> {
  const t0 = Date.now();
  vm.child.kill(signal);
  const got = await Promise.race([vm.exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), 60_000).unref())]);
  assert.is(got, code, `exit status after ${signal} (${Date.now() - t0} ms):\n${vm.out().slice(-3000)}`);
  assert.match(vm.out(), `tsvmm got ${signal} (exit ${code})`);
  assert.not.ok(existsSync(`/proc/${vm.pid}`), 'the process is gone, with all its threads and fds');
  assert.equal(groupMembers(vm.pid), [], 'nothing it started is still running');
  for (const f of files) assert.not.ok(existsSync(f), `${f} was removed`);
  assert.not.ok((await ps()).some((v) => v.pid === vm.pid), "'tsvmm ps' no longer lists it");
}

test.after(() => rmSync(dir, { recursive: true, force: true }));

needs(pool.length >= 2 ? undefined : 'needs 2 host CPUs, to give --host-cpus a strict subset')(
  '--host-cpus confines the vCPU threads, tsvmm ps lists the VM, tsvmm metrics counts its exits; SIGINT ends it with 130, nothing left',
  async () => {
    const cpu = pool[pool.length - 1]!;
    const api = join(dir, 'a-api.sock');
    const uds = join(dir, 'a-v.sock');
    const vm = spawnVm(['--vcpus', '2', '--host-cpus', String(cpu), '--vsock', `cid=3,uds=${uds}`, '--api-sock', api, '--append', 'quiet']);
    try {
      await until('tsvmm ps to list the VM', async () => (await ps()).some((v) => v.pid === vm.pid && v.vcpus === 2));
      const entry = (await ps()).find((v) => v.pid === vm.pid)!;
      assert.is(entry.api_sock, api);
      const text = await tsvmm(['ps'], { env });
      assert.match(text.stdout, new RegExp(`^${entry.id}\\s+${vm.pid}\\s+2\\s`, 'm'));

      await until('both vCPU threads to exist', () => vcpuThreads(vm.pid).length === 2);
      for (const [tid, name] of vcpuThreads(vm.pid)) assert.equal(cpusAllowed(tid, vm.pid), [cpu], `${name} (tid ${tid}) may run on CPU ${cpu} only`);
      assert.equal(cpusAllowed(vm.pid, vm.pid), pool, 'the main thread is not confined');

      const metrics = async () => {
        const r = await tsvmm(['metrics', '--api-sock', api], { env });
        assert.is(r.code, 0, r.stderr);
        return JSON.parse(r.stdout) as { vm_id: string; vcpus: number; utc_timestamp_ms: number; vcpu_exits: Record<string, number>[] };
      };
      const exits = (m: { vcpu_exits: Record<string, number>[] }) => m.vcpu_exits.reduce((n, e) => n + Object.values(e).reduce((a, b) => a + b, 0), 0);
      // Talking to the guest agent makes exits (virtio-mmio register accesses): they must show.
      const agent = await agentOf(uds);
      const m1 = await metrics();
      assert.is(m1.vm_id, entry.id);
      assert.is(m1.vcpus, 2);
      assert.is(m1.vcpu_exits.length, 2);
      for (let i = 0; i < 5; i++) await agent.ping();
      const m2 = await metrics();
      assert.ok(exits(m2) > exits(m1), `exits ${exits(m1)} -> ${exits(m2)} across 5 agent round trips`);
      assert.ok(m2.utc_timestamp_ms > m1.utc_timestamp_ms);
      const prom = await tsvmm(['metrics', '--api-sock', api, '--prometheus'], { env });
      assert.match(prom.stdout, /^tsvmm_vcpu_exits\{vcpu="1",reason="\w+"\} \d+$/m);

      await endsCleanly(vm, 'SIGINT', 130, [api, uds]);
    } finally {
      vm.child.kill('SIGKILL');
    }
  },
);

test('--config-file boots its document; --metrics-path writes a line per interval and one at exit; SIGTERM ends it with 143, nothing left', async () => {
  const guest = await ensureDefaultGuest();
  const uds = join(dir, 'b-v.sock');
  const metricsPath = join(dir, 'metrics.jsonl');
  const config = join(dir, 'vm.json');
  writeFileSync(config, JSON.stringify({
    'boot-source': { kernel_image_path: guest.kernel, initrd_path: guest.initrd, boot_args: `${DEFAULT_CMDLINE} quiet ${encodeGuestCommand('echo "nproc=$(nproc)"; sleep 600')}` },
    'machine-config': { vcpu_count: 2, mem_size_mib: 384 },
    vsock: { guest_cid: 3, uds_path: uds },
    scheduler: { policy: 'static' },
  }));
  const vm = spawnVm(['--config-file', config, '--metrics-path', metricsPath, '--metrics-interval', '1']);
  try {
    await until('the guest to run the command from the config file', () => /nproc=\d+\r?\n/.test(vm.out()), 300_000);
    assert.match(vm.out(), /nproc=2\r?\n/);
    const kb = Number(/mem_kb=(\d+)/.exec(vm.out())?.[1]);
    assert.ok(kb <= 384 * 1024 && kb > 384 * 1024 * 0.75, `MemTotal ${kb} kB for mem_size_mib 384`);
    // policy static: each vCPU thread on its own CPU.
    const own = vcpuThreads(vm.pid).map(([tid]) => cpusAllowed(tid, vm.pid));
    assert.is(own.length, 2);
    assert.ok(own.every((c) => c.length === 1) && own[0]![0] !== own[1]![0], `static placement: ${JSON.stringify(own)}`);

    const lines = () => (existsSync(metricsPath) ? readFileSync(metricsPath, 'utf8').split('\n').filter(Boolean) : []);
    await until('two metrics lines, a second apart', () => lines().length >= 2, 30_000);
    const tKill = Date.now();
    await endsCleanly(vm, 'SIGTERM', 143, [uds]);
    const docs = lines().map((l) => JSON.parse(l) as { vm_id: string; utc_timestamp_ms: number; vcpus: number });
    assert.ok(docs.length >= 3, `${docs.length} lines: two on the interval, one at exit`);
    for (let i = 1; i < docs.length; i++) assert.ok(docs[i]!.utc_timestamp_ms > docs[i - 1]!.utc_timestamp_ms, 'timestamps increase');
    assert.ok(docs.every((d) => d.vm_id === docs[0]!.vm_id && d.vcpus === 2));
    assert.ok(docs[docs.length - 1]!.utc_timestamp_ms >= tKill, 'the last line was written at exit');
  } finally {
    vm.child.kill('SIGKILL');
  }
});

test('in-process: a Machine that ends leaves no vCPU thread and no file descriptor behind', async () => {
  const guest = await ensureDefaultGuest();
  const fds = () => new Map(readdirSync('/proc/self/fd').map((fd) => {
    try {
      return [fd, readlinkSync(`/proc/self/fd/${fd}`)] as const;
    } catch {
      return [fd, '?'] as const;
    }
  }));
  const before = fds();
  const uds = join(dir, 'c-v.sock');
  const m = await Machine.start({
    kernel: guest.kernel, initrd: guest.initrd, cmdline: `${DEFAULT_CMDLINE} quiet`, vcpus: 2, memory: 256 * MiB,
    acpi: true, vsock: { cid: 3, udsPath: uds }, pin: 'none',
  }, { console: () => {}, log: () => {} });
  await until('the vCPU threads to run, named', () => vcpuThreads(process.pid).length === 2, 10_000);
  assert.ok(fds().size > before.size, 'the VM holds fds (KVM, eventfds, sockets)');
  m.finish({ code: 0, reason: 'poweroff', detail: 'test done' });
  await m.exited;
  await until('the vCPU threads to end', () => vcpuThreads(process.pid).length === 0, 10_000);
  const extra = () => [...fds()].filter(([fd, target]) => before.get(fd) !== target);
  const closed = await until('the fds to be closed', () => extra().length === 0, 10_000).then(() => true, () => false);
  assert.ok(closed, `left open: ${extra().map(([fd, t]) => `${fd} -> ${t}`).join(', ')}`);
  assert.not.ok(existsSync(uds), 'the vsock socket file is removed');
});

test.run();
