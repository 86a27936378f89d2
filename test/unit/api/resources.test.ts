import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { apiCall } from '../../../vmm/api/client';
import { fromMachineConfig, readConfigFile, vmConfigDocument } from '../../../vmm/api/resources';
import { DEFAULT_CMDLINE } from '../../../vmm/config';
import { formatPrograms, formatScheduler } from '../../../vmm/api/commands';
import { collectMetrics, MetricsWriter, metricName, renderPrometheus } from '../../../vmm/metrics';
import { formatLine, Logger, newVmId, parseLevel } from '../../../vmm/log';
import { listVms, register } from '../../../vmm/api/registry';
import { existsSync } from 'node:fs';
import { affinityPackage } from '../../../bpf/programs/affinity';
import { packageToJson } from '../../../bpf/package';
import { FakeMachine, rig, tmp } from './fake';

const json = (t: string) => JSON.parse(t) as Record<string, unknown>;
const running = { vsock: { cid: 3, udsPath: '/tmp/unused.sock' }, vcpus: 2 };

test('bpf: load built-in, list, unload; errors for unknown handle and bad bodies', async () => {
  const r = await rig({ attach: running });
  try {
    let x = await apiCall(r.sock, 'PUT', '/bpf/programs', { builtin: 'affinity' });
    assert.is(x.status, 200, x.text);
    const loaded = json(x.text);
    assert.is(loaded.handle, 1);
    assert.is(loaded.name, 'affinity');
    assert.equal(loaded.prog_ids, [100, 101, 102, 103]);
    // The same package as JSON is accepted too (digest checked).
    x = await apiCall(r.sock, 'PUT', '/bpf/programs', { package_json: packageToJson(affinityPackage()) });
    assert.is(x.status, 200, x.text);
    x = await apiCall(r.sock, 'GET', '/bpf/programs');
    const list = json(x.text).programs as { handle: number; hints: number }[];
    assert.equal(list.map((p) => p.handle), [1, 2]);
    assert.match(formatPrograms(list as never), /^HANDLE +NAME +GUEST PROG IDS +HINTS +DIGEST\n1 +affinity +100,101,102,103 +3 /);
    assert.is((await apiCall(r.sock, 'DELETE', '/bpf/programs/1')).status, 204);
    x = await apiCall(r.sock, 'DELETE', '/bpf/programs/1');
    assert.is(x.status, 404);
    x = await apiCall(r.sock, 'DELETE', '/bpf/programs/abc');
    assert.is(x.status, 400);
    x = await apiCall(r.sock, 'PUT', '/bpf/programs', { builtin: 'affinity', elf_path: '/x.o' });
    assert.match(json(x.text).fault_message as string, /exactly one of builtin, package_json, elf_path/);
    x = await apiCall(r.sock, 'PUT', '/bpf/programs', { builtin: 'nope' });
    assert.match(json(x.text).fault_message as string, /bpf.builtin: 'nope' is not one of affinity/);
    const bad = packageToJson(affinityPackage());
    bad.digest = '00'.repeat(32);
    x = await apiCall(r.sock, 'PUT', '/bpf/programs', { package_json: bad });
    assert.is(x.status, 400);
    assert.match(json(x.text).fault_message as string, /digest .* does not match/);
    x = await apiCall(r.sock, 'PUT', '/bpf/programs', { package_json: { format: 1, maps: 5 } });
    assert.is(x.status, 400);
    x = await apiCall(r.sock, 'PUT', '/bpf/programs', { elf_path: join(r.dir, 'missing.o') });
    assert.match(json(x.text).fault_message as string, /bpf.elf_path: cannot read .*ENOENT/);
    // The agent's refusal is a 400 that carries its text.
    r.ctl.machine!.paravirt!.refuse = 'digest not allowed by policy';
    x = await apiCall(r.sock, 'PUT', '/bpf/programs', { builtin: 'affinity' });
    assert.is(x.status, 400);
    assert.match(json(x.text).fault_message as string, /answered REFUSED: digest not allowed by policy/);
  } finally {
    await r.close();
  }
});

test('bpf: no vsock means no hypercall device (400); a silent agent times out (504)', async () => {
  let r = await rig({ attach: { vcpus: 1 } });
  try {
    const x = await apiCall(r.sock, 'PUT', '/bpf/programs', { builtin: 'affinity' });
    assert.is(x.status, 400);
    assert.match(json(x.text).fault_message as string, /needs the hypercall device.*vsock/);
  } finally {
    await r.close();
  }
  r = await rig({ attach: running, agentTimeoutMs: 100 });
  try {
    r.ctl.machine!.paravirt!.hang = true;
    const x = await apiCall(r.sock, 'PUT', '/bpf/programs', { builtin: 'affinity' });
    assert.is(x.status, 504);
    assert.match(json(x.text).fault_message as string, /no answer from the guest agent/);
  } finally {
    await r.close();
  }
});

test('SendCtrlAltDel on a running machine: 204 and one key sequence; a full keyboard buffer is 400', async () => {
  const r = await rig({ attach: { vcpus: 1 } });
  try {
    const m = r.ctl.machine!;
    let x = await apiCall(r.sock, 'PUT', '/actions', { action_type: 'SendCtrlAltDel' });
    assert.is(x.status, 204, x.text);
    assert.is(m.ctrlAltDels, 1);
    m.keyboardFull = true;
    x = await apiCall(r.sock, 'PUT', '/actions', { action_type: 'SendCtrlAltDel' });
    assert.is(x.status, 400);
    assert.match(json(x.text).fault_message as string, /i8042 keyboard buffer is full/);
    assert.is(m.ctrlAltDels, 1);
  } finally {
    await r.close();
  }
});

test('scheduler: show the vCPU table, set policy and pool on the real scheduler', async () => {
  const r = await rig({ attach: running });
  try {
    let x = await apiCall(r.sock, 'GET', '/scheduler');
    let s = json(x.text) as { policy: string; vcpus: { vcpu: number; tid: number; cpus: number[]; applied: boolean }[] };
    assert.is(s.policy, 'none');
    assert.equal(s.vcpus.map((v) => v.tid), [1000, 1001]);
    x = await apiCall(r.sock, 'PUT', '/scheduler', { policy: 'static', host_cpus: '2,3' });
    assert.is(x.status, 200, x.text);
    s = json(x.text) as typeof s;
    assert.is(s.policy, 'static');
    assert.equal(s.vcpus.map((v) => v.cpus), [[2], [3]]);
    assert.ok(s.vcpus.every((v) => v.applied));
    const m = r.ctl.machine!;
    assert.equal(m.applied.slice(-2), [{ vcpu: 0, cpus: [2] }, { vcpu: 1, cpus: [3] }]);
    assert.match(formatScheduler(s as never), /policy static, host CPUs 2,3\nVCPU +TID +CPUS.*\n0 +1000 +2 +static +yes/);
    x = await apiCall(r.sock, 'PUT', '/scheduler', { policy: 'fastest' });
    assert.is(x.status, 400);
    assert.match(json(x.text).fault_message as string, /scheduler.policy: 'fastest' is not one of none, static, hinted/);
  } finally {
    await r.close();
  }
});

test('scheduler settings before boot go into the machine config', async () => {
  const r = await rig();
  try {
    await apiCall(r.sock, 'PUT', '/boot-source', { kernel_image_path: r.kernel });
    assert.is((await apiCall(r.sock, 'PUT', '/scheduler', { policy: 'hinted', host_cpus: '0-1' })).status, 200);
    assert.is((await apiCall(r.sock, 'PUT', '/actions', { action_type: 'InstanceStart' })).status, 204);
    assert.is(r.starts[0]!.pin, 'hinted');
    assert.is(r.starts[0]!.hostCpus, '0-1');
  } finally {
    await r.close();
  }
});

test('PUT /drives/{id} and PUT /entropy before boot go into the machine config (Firecracker bodies)', async () => {
  const r = await rig();
  try {
    await apiCall(r.sock, 'PUT', '/boot-source', { kernel_image_path: r.kernel });
    const put = (path: string, body: unknown) => apiCall(r.sock, 'PUT', path, body);
    assert.is((await put('/drives/scratch', { drive_id: 'scratch', path_on_host: r.kernel, is_root_device: false, is_read_only: true })).status, 204);
    assert.is((await put('/drives/rootfs', { drive_id: 'rootfs', path_on_host: r.kernel, is_root_device: true, is_read_only: false })).status, 204);
    let x = await put('/drives/other', { drive_id: 'other', path_on_host: r.kernel, is_root_device: true });
    assert.is(x.status, 400);
    assert.match(json(x.text).fault_message as string, /rootfs and other are both root devices/);
    x = await put('/drives/a', { drive_id: 'b', path_on_host: r.kernel, is_root_device: false });
    assert.match(json(x.text).fault_message as string, /drive_id: 'b' does not match the path's 'a'/);
    x = await put('/drives/a', { drive_id: 'a', path_on_host: join(r.dir, 'none.img'), is_root_device: false });
    assert.match(json(x.text).fault_message as string, /path_on_host: cannot open .*ENOENT/);
    x = await put('/drives/a', { drive_id: 'a', path_on_host: r.kernel, is_root_device: false, cache_type: 'Unsafe' });
    assert.match(json(x.text).fault_message as string, /unknown field 'cache_type'/);
    // Same id again: replaced, not added.
    assert.is((await put('/drives/scratch', { drive_id: 'scratch', path_on_host: r.kernel, is_root_device: false })).status, 204);
    assert.is((await put('/entropy', { rate_limiter: { bandwidth: { size: 1000, refill_time: 100, one_time_burst: 10 }, ops: { size: 5, refill_time: 1000 } } })).status, 204);
    x = await put('/entropy', { rate_limiter: { bandwidth: { size: 1000 } } });
    assert.match(json(x.text).fault_message as string, /entropy.rate_limiter.bandwidth.refill_time: missing required field/);
    const cfg = json((await apiCall(r.sock, 'GET', '/vm/config')).text);
    assert.equal(cfg.drives, [
      { drive_id: 'scratch', path_on_host: r.kernel, is_root_device: false, is_read_only: false },
      { drive_id: 'rootfs', path_on_host: r.kernel, is_root_device: true, is_read_only: false },
    ]);
    assert.is((await put('/actions', { action_type: 'InstanceStart' })).status, 204);
    const c = r.starts[0]!;
    assert.equal(c.drives!.map((d) => [d.id, d.root, d.readOnly]), [['rootfs', true, false], ['scratch', false, false]], 'the root drive first');
    assert.equal(c.rng, { rateLimiter: { bandwidth: { size: 1000, refillTimeMs: 100, oneTimeBurst: 10 }, ops: { size: 5, refillTimeMs: 1000 } } });
    x = await put('/drives/late', { drive_id: 'late', path_on_host: r.kernel, is_root_device: false });
    assert.match(json(x.text).fault_message as string, /not allowed after boot/);
  } finally {
    await r.close();
  }
});

test('metrics: JSON and Prometheus over the API; names, labels, types', async () => {
  const r = await rig({ attach: running });
  try {
    await apiCall(r.sock, 'PUT', '/bpf/programs', { builtin: 'affinity' });
    let x = await apiCall(r.sock, 'GET', '/metrics');
    assert.match(x.contentType, /application\/json/);
    const m = json(x.text) as { vm_id: string; vsock: { connectionsOpened: number }; transports: Record<string, { notifications: number }>; programs: { name: string; hints: number }[]; hypercall: { hintRecords: number } };
    assert.is(m.vm_id, 'testvm');
    assert.equal((m as unknown as { vcpu_exits: Record<string, number>[] }).vcpu_exits[0], { io: 10, mmio: 3, forwarded: 5 });
    assert.is(m.vsock.connectionsOpened, 2);
    assert.is(m.transports['virtio-vsock']!.notifications, 7);
    assert.is(m.hypercall.hintRecords, 5);
    assert.equal(m.programs.map((p) => [p.name, p.hints]), [['affinity', 3]]);
    x = await apiCall(r.sock, 'GET', '/metrics?format=prometheus');
    assert.match(x.contentType, /text\/plain; version=0.0.4/);
    const text = x.text;
    assert.match(text, /^# TYPE tsvmm_vcpus gauge\ntsvmm_vcpus 2\n/);
    assert.match(text, /\ntsvmm_vcpu_exits\{vcpu="1",reason="io"\} 11\n/);
    assert.match(text, /\ntsvmm_vsock_connections_opened 2\n/);
    assert.match(text, /\ntsvmm_vsock_dropped\{reason="bad-type"\} 1\n/);
    assert.match(text, /\ntsvmm_transport_notifications\{device="virtio-vsock"\} 7\n/);
    assert.match(text, /\ntsvmm_scheduler_rate_limited_task 0\n/);
    assert.match(text, /\ntsvmm_program_hints\{handle="1",name="affinity"\} 3\n/);
    assert.match(text, /\ntsvmm_hypercall_calls\{command="HELLO"\} 1\n/);
    // Every sample line is name{labels} value, every name has exactly one TYPE line.
    const lines = text.trimEnd().split('\n');
    for (const l of lines) assert.ok(/^# TYPE tsvmm_[a-z0-9_]+ (counter|gauge)$/.test(l) || /^tsvmm_[a-z0-9_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? \d+$/.test(l), l);
    const types = lines.filter((l) => l.startsWith('# TYPE')).map((l) => l.split(' ')[2]);
    assert.is(new Set(types).size, types.length);
    x = await apiCall(r.sock, 'GET', '/metrics', undefined, { accept: 'text/plain' });
    assert.match(x.text, /^# TYPE/);
    assert.is((await apiCall(r.sock, 'GET', '/metrics?format=xml')).status, 400);
  } finally {
    await r.close();
  }
});

test('GET /diagnosis: the machine\'s diagnosis as data and as text, ending with the console tail', async () => {
  const r = await rig({ attach: running });
  try {
    const x = await apiCall(r.sock, 'GET', '/diagnosis');
    assert.is(x.status, 200);
    const d = json(x.text) as { vcpus: { vcpu: number; mpState: string }[]; console: { lines: string[] }; text: string };
    assert.equal(d.vcpus.map((v) => [v.vcpu, v.mpState]), [[0, 'halted'], [1, 'halted']]);
    assert.equal(d.console.lines, ['[    1.0] booting', 'tsvmm-init: ready']);
    assert.match(d.text, 'vCPU 1 (tid 1001): worker in KVM_RUN; mp_state halted');
    assert.ok(d.text.endsWith('\n| [    1.0] booting\n| tsvmm-init: ready'), d.text);
  } finally {
    await r.close();
  }
});

test('metric names and label escaping; the JSON-lines writer', () => {
  assert.is(metricName('tsvmm', 'vsock', 'bytesFromGuest'), 'tsvmm_vsock_bytes_from_guest');
  const m = new FakeMachine({ kernel: 'k', cmdline: '', vcpus: 1, memory: 64 << 20, acpi: true, pin: 'none' });
  (m.transports as { name: string; transport: { counters: { notifications: number; interrupts: number; errors: number; needsReset: number; resets: number } } }[])
    .push({ name: 'a"b\\c', transport: { counters: { notifications: 1, interrupts: 0, errors: 0, needsReset: 0, resets: 0 } } });
  assert.match(renderPrometheus(collectMetrics(m, 'x')), /tsvmm_transport_notifications\{device="a\\"b\\\\c"\} 1/);
  const path = join(tmp(), 'metrics.jsonl');
  let n = 0;
  const w = new MetricsWriter(path, 3600, () => ({ ...collectMetrics(m, 'x', () => ++n) }));
  w.flush();
  w.stop();
  const lines = readFileSync(path, 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l) as { utc_timestamp_ms: number });
  assert.equal(lines.map((l) => l.utc_timestamp_ms), [1, 2]);
});

test('config file: Firecracker document, field-level errors', () => {
  const dir = tmp();
  const kernel = join(dir, 'vmlinux');
  writeFileSync(kernel, 'k');
  const file = join(dir, 'vm.json');
  const write = (doc: unknown) => writeFileSync(file, typeof doc === 'string' ? doc : JSON.stringify(doc));
  write({ 'boot-source': { kernel_image_path: kernel, boot_args: 'console=ttyS0' }, 'machine-config': { vcpu_count: 2, mem_size_mib: 64, smt: false }, vsock: { guest_cid: 5, uds_path: '/tmp/v.sock', vsock_id: 'vsock0' }, scheduler: { policy: 'hinted' } });
  assert.equal(readConfigFile(file, { acpi: false }), {
    kernel, initrd: undefined, cmdline: 'console=ttyS0', vcpus: 2, memory: 64 << 20, acpi: false,
    vsock: { cid: 5, udsPath: '/tmp/v.sock' }, drives: undefined, rng: undefined, pin: 'hinted', hostCpus: undefined, prio: 'none', prioMax: 10,
  });
  const err = (doc: unknown): string => {
    write(doc);
    try {
      readConfigFile(file);
    } catch (e) {
      return (e as Error).message;
    }
    return 'accepted';
  };
  const bs = { kernel_image_path: kernel };
  assert.match(err('{"boot-source": '), /not valid JSON/);
  assert.match(err({ 'machine-config': { vcpu_count: 1, mem_size_mib: 64 } }), /config.boot-source: missing required field/);
  assert.match(err({ 'boot-source': bs, disks: [] }), /config: unknown field 'disks'/);
  assert.match(err({ 'boot-source': bs, drives: {} }), /drives: expected an array/);
  assert.match(err({ 'boot-source': bs, drives: [{ drive_id: 'a', path_on_host: kernel }] }), /drives\[0\].is_root_device: missing required field/);
  assert.match(err({ 'boot-source': bs, entropy: { rate_limiter: { bandwidth: { size: 0, refill_time: 1 } } } }), /entropy.rate_limiter.bandwidth.size: 0 is below the minimum 1/);
  write({ 'boot-source': bs, drives: [{ drive_id: 'data', path_on_host: kernel, is_root_device: false, is_read_only: true }, { drive_id: 'rootfs', path_on_host: kernel, is_root_device: true }], entropy: null });
  const withDrives = readConfigFile(file);
  assert.equal(withDrives.drives, [{ id: 'rootfs', path: kernel, readOnly: false, root: true }, { id: 'data', path: kernel, readOnly: true, root: false }]);
  assert.is(withDrives.rng, false, '"entropy": null drops virtio-rng');
  assert.match(err({ 'boot-source': { ...bs, kernel: 'x' } }), /boot-source: unknown field 'kernel'/);
  assert.match(err({ 'boot-source': bs, 'machine-config': { vcpu_count: 1, mem_size_mib: '64' } }), /machine-config.mem_size_mib: expected an integer, got a string/);
  assert.match(err({ 'boot-source': bs, 'machine-config': { vcpu_count: 1, mem_size_mib: 8 } }), /mem_size_mib: 8 is below the minimum 32/);
  assert.match(err({ 'boot-source': bs, vsock: { guest_cid: 3 } }), /vsock.uds_path: missing required field/);
  assert.match(err({ 'boot-source': { kernel_image_path: join(dir, 'none') } }), /boot-source.kernel_image_path: cannot open/);
  assert.is(err({ 'boot-source': bs, 'machine-config': { vcpu_count: 1, mem_size_mib: 64 } }), 'accepted');
  // GET /vm/config writes null for absent sections: the same document must load back.
  assert.is(err({ 'boot-source': bs, vsock: null }), 'accepted');
  // tsvmm's boot-source.unpack: false is --no-unpack (and survives GET /vm/config); true is the default.
  write({ 'boot-source': { ...bs, unpack: false } });
  const noUnpack = readConfigFile(file);
  assert.is(noUnpack.unpack, false);
  assert.equal(vmConfigDocument(fromMachineConfig(noUnpack))['boot-source'], { kernel_image_path: kernel, initrd_path: undefined, boot_args: DEFAULT_CMDLINE, unpack: false });
  write({ 'boot-source': { ...bs, unpack: true } });
  assert.is(readConfigFile(file).unpack, undefined);
  assert.match(err({ 'boot-source': { ...bs, unpack: 'no' } }), /boot-source.unpack: expected a boolean/);
});

test('log lines: format, levels, one line per event, file sink', () => {
  assert.is(formatLine({ time: new Date(Date.UTC(2026, 10, 30, 5)), id: 'abc', level: 'warn', thread: 'main', origin: 'api', message: 'two\nlines' }),
    '2026-11-30T05:00:00.000Z [tsvmm:abc] WARN main api: two\\nlines');
  const lines: string[] = [];
  const l = new Logger({ id: 'vm1', level: 'info', write: (s) => lines.push(s), now: () => new Date(0) });
  l.debug('x', 'hidden');
  l.info('scheduler', 'shown');
  l.error('vmm', 'bad');
  assert.equal(lines, ['1970-01-01T00:00:00.000Z [tsvmm:vm1] INFO main scheduler: shown', '1970-01-01T00:00:00.000Z [tsvmm:vm1] ERROR main vmm: bad']);
  assert.throws(() => parseLevel('loud'), /must be one of error, warn, info, debug/);
  assert.is(parseLevel('DEBUG'), 'debug');
  const path = join(tmp(), 'log');
  const f = new Logger({ id: 'vm2', path });
  f.fn('vmm')('hello');
  f.close();
  assert.match(readFileSync(path, 'utf8'), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[tsvmm:vm2\] INFO main vmm: hello\n$/);
  assert.match(newVmId(), /^[A-Za-z0-9_-]{10}$/);
});

test('ps registry: live entries listed, stale ones (dead pid) ignored and removed', () => {
  const dir = tmp();
  const remove = register({ id: 'live1', pid: process.pid, api_sock: '/tmp/a.sock', started: '2026-01-01T00:00:00Z', kernel: 'k', vcpus: 1 }, dir);
  writeFileSync(join(dir, 'dead.json'), JSON.stringify({ id: 'dead', pid: 2 ** 22 + 12345, api_sock: null, started: '2025', kernel: null, vcpus: null }));
  writeFileSync(join(dir, 'junk.json'), '{');
  assert.equal(listVms(dir).map((v) => v.id), ['live1']);
  assert.not.ok(existsSync(join(dir, 'dead.json')));
  remove();
  assert.equal(listVms(dir), []);
});

test.run();
