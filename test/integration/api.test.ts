// The control API against a real guest: Firecracker's getting-started sequence with
// `curl --unix-socket` boots the stock kernel; then live eBPF injection through the CLI changes
// the hints the host sees, and a scheduler policy change at run time re-pins the vCPU threads.
// Last, SendCtrlAltDel types the keys into the guest's i8042 keyboard and the guest reboots:
// tsvmm exits with its reboot status.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureDefaultGuest } from '../../vmm/default-guest';
import { DEFAULT_CMDLINE } from '../../vmm/config';
import { ROOT, TSVMM, agentOf, tsvmm, until } from './helpers';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-api-'));
const api = join(dir, 'api.sock');
const uds = join(dir, 'v.sock');

function curl(method: string, path: string, body?: unknown): { status: number; json: Record<string, unknown> | undefined } {
  const args = ['-s', '-w', '\n%{http_code}', '--unix-socket', api, '-X', method, `http://localhost${path}`];
  if (body !== undefined) args.push('-H', 'Content-Type: application/json', '-d', JSON.stringify(body));
  const r = spawnSync('curl', args, { encoding: 'utf8' });
  const lines = r.stdout.trimEnd().split('\n');
  const status = Number(lines.pop());
  const text = lines.join('\n');
  return { status, json: text ? (JSON.parse(text) as Record<string, unknown>) : undefined };
}

const vmm = spawn(process.execPath, [TSVMM, 'run', '--api-sock', api, '--wait'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
let vmmOut = '';
vmm.stdout.on('data', (b) => (vmmOut += b));
vmm.stderr.on('data', (b) => (vmmOut += b));
const vmmExit = new Promise<number | null>((r) => vmm.once('close', r));

test.after(async () => {
  vmm.kill('SIGTERM');
  await vmmExit;
  assert.not.ok(existsSync(api), 'the API socket is removed at exit');
  rmSync(dir, { recursive: true, force: true });
});

test('Firecracker getting-started sequence with curl boots the stock kernel', async () => {
  const guest = await ensureDefaultGuest();
  for (let i = 0; i < 100 && !existsSync(api); i++) await new Promise((r) => setTimeout(r, 100));
  assert.is(curl('GET', '/').json?.state, 'Not started');
  assert.is(curl('PUT', '/boot-source', { kernel_image_path: guest.kernel, initrd_path: guest.initrd, boot_args: `${DEFAULT_CMDLINE} quiet` }).status, 204);
  assert.is(curl('PUT', '/machine-config', { vcpu_count: 2, mem_size_mib: 512 }).status, 204);
  assert.is(curl('PUT', '/vsock', { guest_cid: 3, uds_path: uds }).status, 204);
  assert.is(curl('PUT', '/machine-config', { vcpus: 2 }).status, 400, 'unknown field');
  assert.is(curl('PUT', '/actions', { action_type: 'SendCtrlAltDel' }).status, 400, 'no keyboard before InstanceStart');
  assert.is(curl('PUT', '/actions', { action_type: 'InstanceStart' }).status, 204, vmmOut);
  assert.is(curl('GET', '/').json?.state, 'Running');
  assert.is(curl('PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 512 }).status, 400, 'machine-config after start');
  await agentOf(uds);
});

test('live injection through the CLI: hints appear only while the program is loaded', async () => {
  const agent = await agentOf(uds);
  const seen = () => Number((curl('GET', '/metrics').json?.hypercall as Record<string, number>).hintRecordsSeen);
  const programs = () => (curl('GET', '/bpf/programs').json!.programs as { handle: number; name: string; prog_ids: number[]; hints: number }[]);
  const load = await tsvmm(['bpf', 'load', '--api-sock', api, 'affinity']);
  assert.is(load.code, 0, load.stderr + load.stdout);
  const list = await tsvmm(['bpf', 'list', '--api-sock', api, '--json']);
  const first = (JSON.parse(list.stdout) as { programs: { handle: number; name: string; prog_ids: number[] }[] }).programs.find((p) => p.name === 'affinity')!;
  const before = seen();
  await agent.exec({ argv: ['taskset', '-c', '1', 'true'] });
  // Both of the call's hints (AFFINITY, then UNPIN when the task exits), so none is still on its way.
  await until('the AFFINITY and UNPIN hints while affinity is loaded', () => programs().find((p) => p.handle === first.handle)!.hints >= 2);
  assert.is(seen() - before, 2);

  const unload = await tsvmm(['bpf', 'unload', '--api-sock', api, String(first.handle)]);
  assert.is(unload.code, 0, unload.stderr);
  assert.not.ok(programs().some((p) => p.handle === first.handle), 'the handle is gone from /bpf/programs');
  // In the guest, no agent process holds the unloaded programs any more (their fds are closed).
  await until('the guest agent to close the unloaded programs', async () => {
    let fdinfo = '';
    await agent.exec({ argv: ['sh', '-c', 'grep -h ^prog_id /proc/[0-9]*/fdinfo/* 2>/dev/null || true'], onStdout: (c) => (fdinfo += c) });
    const held = new Set([...fdinfo.matchAll(/prog_id:\s+(\d+)/g)].map((m) => Number(m[1])));
    return first.prog_ids.every((id) => !held.has(id));
  });
  const after = seen();
  await agent.exec({ argv: ['taskset', '-c', '1', 'true'] });
  // A barrier instead of a sleep: load affinity again and make the same call; once its hints
  // (AFFINITY, then UNPIN at exit) are in, a hint from the first call would be in too.
  assert.is((await tsvmm(['bpf', 'load', '--api-sock', api, 'affinity'])).code, 0);
  const second = programs().find((p) => p.name === 'affinity')!;
  await agent.exec({ argv: ['taskset', '-c', '1', 'true'] });
  await until('the reloaded program\'s AFFINITY and UNPIN hints', () => programs().find((p) => p.handle === second.handle)!.hints >= 2);
  const fromSecond = programs().find((p) => p.handle === second.handle)!.hints;
  assert.is(seen() - after, fromSecond, 'every hint since the unload came from the reloaded program');
  assert.is((await tsvmm(['bpf', 'unload', '--api-sock', api, String(second.handle)])).code, 0);
});

test('scheduler policy change at run time re-pins the vCPU threads', async () => {
  const pool = /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]!;
  const set = await tsvmm(['sched', 'set', '--api-sock', api, '--policy', 'static']);
  assert.is(set.code, 0, set.stderr);
  const rows = (curl('GET', '/scheduler').json!.vcpus as { vcpu: number; tid: number; cpus: number[] }[]);
  for (const r of rows) {
    assert.is(r.cpus.length, 1, `vCPU ${r.vcpu} has its own CPU under static`);
    const real = /Cpus_allowed_list:\s*(\S+)/.exec(readFileSync(`/proc/${vmm.pid}/task/${r.tid}/status`, 'utf8'))![1];
    assert.is(real, String(r.cpus[0]));
  }
  assert.is((await tsvmm(['sched', 'set', '--api-sock', api, '--policy', 'none'])).code, 0);
  for (const r of curl('GET', '/scheduler').json!.vcpus as { tid: number }[]) {
    assert.is(/Cpus_allowed_list:\s*(\S+)/.exec(readFileSync(`/proc/${vmm.pid}/task/${r.tid}/status`, 'utf8'))![1], pool);
  }
});

test('metrics count real KVM exits per vCPU, by reason', () => {
  const m = curl('GET', '/metrics').json as { vcpu_exits: Record<string, number>[]; transports: Record<string, { interrupts: number }> };
  assert.is(m.vcpu_exits.length, 2);
  assert.ok((m.vcpu_exits[0]!.io ?? 0) > 0, JSON.stringify(m.vcpu_exits));
  assert.ok((m.vcpu_exits[0]!.forwarded ?? 0) > 0, 'serial/virtio register accesses went to main-thread devices');
  // Linux reads InterruptStatus and writes InterruptACK for every virtio interrupt it takes;
  // the vCPU threads serve both from the transport's shared cell.
  const interrupts = m.transports['virtio-vsock']?.interrupts ?? 0;
  const shared = m.vcpu_exits.reduce((n, e) => n + (e.shared ?? 0), 0);
  // The agent's vsock traffic of the tests above went through interrupts.
  assert.ok(interrupts > 0, `no virtio-vsock interrupt counted after the agent's traffic: ${JSON.stringify(m.transports)}`);
  assert.ok(shared > 0, `${interrupts} virtio interrupts, no InterruptStatus/ACK served in a vCPU thread: ${JSON.stringify(m.vcpu_exits)}`);
});

test('bad requests get clear errors and leave the VM running', () => {
  const r = spawnSync('curl', ['-s', '--unix-socket', api, '-X', 'PUT', 'http://localhost/scheduler', '-H', 'Content-Type: application/json', '-d', '{not json'], { encoding: 'utf8' });
  assert.match(r.stdout, 'fault_message');
  assert.is(curl('GET', '/').json?.state, 'Running');
});

test('SendCtrlAltDel: the guest finds the i8042 through ACPI, takes the keys and reboots; tsvmm exits 3', async () => {
  const agent = await agentOf(uds);
  // The driver lines are KERN_INFO (hidden by `quiet` on the console): ask the guest's dmesg.
  // atkbd binds the keyboard from a workqueue, so give it a moment after boot.
  let dmesg = '';
  for (let i = 0; i < 50 && !/input: AT Raw Set 2 keyboard/.test(dmesg); i++) {
    if (i) await new Promise((r) => setTimeout(r, 200));
    let out = '';
    await agent.exec({ argv: ['dmesg'], onStdout: (c) => (out += c) });
    dmesg = out;
  }
  // dmesg prints Linux irq numbers (without a legacy PIC, GSI 1 gets a dynamic one);
  // /proc/interrupts shows the IOAPIC pin.
  assert.match(dmesg, /i8042: PNP: PS\/2 Controller \[PNP0303[^\]]*\] at 0x60,0x64 irq \d+/, dmesg);
  assert.match(dmesg, /serio: i8042 KBD port at 0x60,0x64 irq \d+/);
  assert.match(dmesg, /input: AT Raw Set 2 keyboard/, 'XLATE clear: untranslated set 2, as the keys are sent');
  let interrupts = '';
  await agent.exec({ argv: ['cat', '/proc/interrupts'], onStdout: (c) => (interrupts += c) });
  assert.match(interrupts, /IO-APIC\s+1-edge\s+i8042/, interrupts);
  const t0 = Date.now();
  assert.is(curl('PUT', '/actions', { action_type: 'SendCtrlAltDel' }).status, 204);
  const code = await Promise.race([vmmExit, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 120_000))]);
  assert.is(code, 3, `tsvmm's reboot exit status within 120 s (got ${code} after ${Date.now() - t0} ms)\n${vmmOut.slice(-3000)}`);
});

test.run();
