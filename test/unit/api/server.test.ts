import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { apiCall } from '../../../vmm/api/client';
import { ApiServer } from '../../../vmm/api/http';
import { rig, tmp } from './fake';

async function rejects(fn: () => Promise<unknown>, re: RegExp): Promise<void> {
  try {
    await fn();
  } catch (e) {
    assert.match((e as Error).message, re);
    return;
  }
  assert.unreachable('expected a rejection');
}

const json = (t: string) => JSON.parse(t) as Record<string, unknown>;

/** curl runs in a child process: the server lives in this one, so it must not block. */
async function curl(sock: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: string }> {
  const args = ['-s', '--unix-socket', sock, '-X', method, '-w', '\n%{http_code}', `http://localhost${path}`];
  if (body !== undefined) args.push('-H', 'Content-Type: application/json', '-H', 'Accept: application/json', '-d', JSON.stringify(body));
  const { stdout: out } = await promisify(execFile)('curl', args, { encoding: 'utf8' });
  const nl = out.lastIndexOf('\n');
  return { status: Number(out.slice(nl + 1)), body: out.slice(0, nl) };
}

test('Firecracker sequence through curl: boot-source, machine-config, vsock, InstanceStart', async () => {
  const r = await rig();
  try {
    let res = await curl(r.sock, 'GET', '/');
    assert.is(res.status, 200);
    assert.equal(json(res.body), { id: 'testvm', state: 'Not started', vmm_version: '0.1.0', app_name: 'tsvmm' });
    res = await curl(r.sock, 'PUT', '/boot-source', { kernel_image_path: r.kernel, boot_args: 'console=ttyS0 quiet' });
    assert.is(res.status, 204, res.body);
    res = await curl(r.sock, 'PUT', '/machine-config', { vcpu_count: 2, mem_size_mib: 128 });
    assert.is(res.status, 204, res.body);
    res = await curl(r.sock, 'PUT', '/vsock', { guest_cid: 3, uds_path: join(r.dir, 'v.sock') });
    assert.is(res.status, 204, res.body);
    assert.is(r.starts.length, 0);
    res = await curl(r.sock, 'PUT', '/actions', { action_type: 'InstanceStart' });
    assert.is(res.status, 204, res.body);
    assert.is(r.starts.length, 1);
    assert.equal(r.starts[0], {
      kernel: r.kernel, initrd: undefined, cmdline: 'console=ttyS0 quiet', vcpus: 2, memory: 128 << 20, acpi: true,
      vsock: { cid: 3, udsPath: join(r.dir, 'v.sock') }, drives: undefined, rng: undefined, pin: 'none', hostCpus: undefined, prio: 'none', prioMax: 10,
    });
    assert.is(json((await curl(r.sock, 'GET', '/')).body).state, 'Running');
    assert.ok((await Promise.race([r.ctl.started, new Promise((res) => setTimeout(res, 100))])), 'started resolves');
    // After boot: pre-boot resources are frozen, a second start is refused.
    res = await curl(r.sock, 'PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 64 });
    assert.is(res.status, 400);
    assert.match(json(res.body).fault_message as string, /not allowed after boot/);
    res = await curl(r.sock, 'PUT', '/actions', { action_type: 'InstanceStart' });
    assert.is(res.status, 400);
    assert.match(json(res.body).fault_message as string, /already started/);
    const cfg = json((await curl(r.sock, 'GET', '/vm/config')).body);
    assert.equal(cfg['machine-config'], { vcpu_count: 2, mem_size_mib: 128, smt: false });
    assert.equal(json((await curl(r.sock, 'GET', '/machine-config')).body), { vcpu_count: 2, mem_size_mib: 128, smt: false });
  } finally {
    await r.close();
  }
});

test('socket file is 0600 and removed at close; stale socket replaced; live one refused', async () => {
  const r = await rig();
  assert.is(statSync(r.sock).mode & 0o777, 0o600);
  await rejects(() => ApiServer.listen({ path: r.sock, handle: async () => ({ status: 204 }) }), /another process is serving/);
  await r.close();
  assert.not.ok(existsSync(r.sock));
  // A socket file with no listener (left by a crash) is replaced.
  const dir = tmp();
  const stale = join(dir, 's.sock');
  // A process that bound the path and died leaves exactly this behind.
  await promisify(execFile)('python3', ['-c', 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', stale]);
  assert.ok(existsSync(stale));
  const s2 = await ApiServer.listen({ path: stale, handle: async () => ({ status: 204 }) });
  assert.is((await apiCall(stale, 'GET', '/')).status, 204);
  await s2.close();
  const notSock = join(dir, 'file');
  writeFileSync(notSock, 'x');
  await rejects(() => ApiServer.listen({ path: notSock, handle: async () => ({ status: 204 }) }), /not a socket/);
});

test('malformed JSON, wrong content type, unknown fields, wrong types, missing fields', async () => {
  const r = await rig();
  try {
    const raw = (body: string, type = 'application/json') => new Promise<{ status: number; text: string }>((resolve, reject) => {
      const c = connect(r.sock);
      let out = '';
      c.on('data', (d) => (out += d));
      c.on('end', () => resolve({ status: Number(out.split(' ')[1]), text: out.slice(out.indexOf('\r\n\r\n') + 4) }));
      c.on('error', reject);
      c.end(`PUT /machine-config HTTP/1.1\r\nHost: x\r\nContent-Type: ${type}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    });
    let res = await raw('{"vcpu_count": 2,');
    assert.is(res.status, 400);
    assert.match(json(res.text).fault_message as string, /not valid JSON/);
    res = await raw('vcpu_count=2', 'application/x-www-form-urlencoded');
    assert.is(res.status, 415);
    const put = async (path: string, body: unknown) => {
      const x = await apiCall(r.sock, 'PUT', path, body);
      return { status: x.status, msg: x.text ? (json(x.text).fault_message as string) : '' };
    };
    let p = await put('/machine-config', { vcpu_count: 2, mem_size_mib: 128, vcpus: 4 });
    assert.is(p.status, 400);
    assert.match(p.msg, /machine-config: unknown field 'vcpus'/);
    p = await put('/machine-config', { vcpu_count: '2', mem_size_mib: 128 });
    assert.is(p.status, 400);
    assert.is(p.msg, 'machine-config.vcpu_count: expected an integer, got a string');
    p = await put('/machine-config', { vcpu_count: 1.5, mem_size_mib: 128 });
    assert.match(p.msg, /vcpu_count: expected an integer, got a number/);
    p = await put('/machine-config', { vcpu_count: 0, mem_size_mib: 128 });
    assert.match(p.msg, /vcpu_count: 0 is below the minimum 1/);
    p = await put('/machine-config', { mem_size_mib: 128 });
    assert.is(p.msg, 'machine-config.vcpu_count: missing required field');
    p = await put('/machine-config', { vcpu_count: 1, mem_size_mib: 128, smt: true });
    assert.match(p.msg, /smt: true is not supported/);
    p = await put('/machine-config', [1, 2]);
    assert.is(p.msg, 'machine-config: expected a JSON object, got an array');
    p = await put('/boot-source', { kernel_image_path: join(r.dir, 'nope') });
    assert.is(p.status, 400);
    assert.match(p.msg, /boot-source.kernel_image_path: cannot open .*ENOENT/);
    p = await put('/vsock', { guest_cid: 2, uds_path: '/tmp/x' });
    assert.match(p.msg, /vsock.guest_cid: 2 is below the minimum 3/);
    p = await put('/actions', { action_type: 'Reboot' });
    assert.match(p.msg, /actions.action_type: 'Reboot' is not one of InstanceStart, SendCtrlAltDel/);
    p = await put('/actions', { action_type: 'SendCtrlAltDel' });
    assert.is(p.status, 400, 'no keyboard before InstanceStart (as in Firecracker)');
    assert.match(p.msg, /SendCtrlAltDel: the machine is not running \(state Not started\)/);
    // InstanceStart without a boot source names what is missing.
    p = await put('/actions', { action_type: 'InstanceStart' });
    assert.is(p.status, 400);
    assert.match(p.msg, /boot-source: not configured/);
    // PUT without a body.
    const nb = await apiCall(r.sock, 'PUT', '/vsock');
    assert.is(nb.status, 400);
    assert.is(r.starts.length, 0);
  } finally {
    await r.close();
  }
});

test('unknown path 404, wrong method 405 with Allow, wrong state 400, oversized body 413', async () => {
  const r = await rig();
  try {
    let x = await apiCall(r.sock, 'GET', '/nope');
    assert.is(x.status, 404);
    assert.match(json(x.text).fault_message as string, /unknown resource \/nope/);
    x = await apiCall(r.sock, 'DELETE', '/machine-config');
    assert.is(x.status, 405);
    x = await apiCall(r.sock, 'GET', '/bpf/programs/1');
    assert.is(x.status, 405);
    x = await apiCall(r.sock, 'PUT', '/bpf/programs', { builtin: 'affinity' });
    assert.is(x.status, 400);
    assert.match(json(x.text).fault_message as string, /not running \(state Not started\)/);
    x = await apiCall(r.sock, 'GET', '/metrics');
    assert.is(x.status, 400);
    const big = { kernel_image_path: 'x'.repeat(70 * 1024) };
    x = await apiCall(r.sock, 'PUT', '/boot-source', big);
    assert.is(x.status, 413);
    assert.match(json(x.text).fault_message as string, /larger than 65536 bytes/);
    // The server is still fine afterwards.
    assert.is((await apiCall(r.sock, 'GET', '/')).status, 200);
  } finally {
    await r.close();
  }
});

test('an InstanceStart that fails reports why and leaves the VM startable', async () => {
  const r = await rig({ failStart: '/dev/kvm not found' });
  try {
    await apiCall(r.sock, 'PUT', '/boot-source', { kernel_image_path: r.kernel });
    const x = await apiCall(r.sock, 'PUT', '/actions', { action_type: 'InstanceStart' });
    assert.is(x.status, 400);
    assert.match(json(x.text).fault_message as string, /InstanceStart failed: \/dev\/kvm not found/);
    assert.is(json((await apiCall(r.sock, 'GET', '/')).text).state, 'Not started');
  } finally {
    await r.close();
  }
});

test('a client that never finishes its headers is dropped; others are served meanwhile', async () => {
  const r = await rig({ headersTimeoutMs: 300, requestTimeoutMs: 600 });
  try {
    const slow = connect(r.sock);
    let closedAt = 0;
    let got = '';
    slow.on('data', (d) => (got += d));
    const closed = new Promise<void>((res) => slow.on('close', () => { closedAt = Date.now(); res(); }));
    slow.on('error', () => {});
    const t0 = Date.now();
    slow.write('GET / HTTP/1.1\r\nHost: x\r\n'); // and never the blank line
    const fast = await apiCall(r.sock, 'GET', '/');
    assert.is(fast.status, 200);
    assert.ok(Date.now() - t0 < 300, 'served while the slow client hangs');
    await Promise.race([closed, new Promise((_, rej) => setTimeout(() => rej(new Error('slow client not dropped')), 3000))]);
    assert.ok(closedAt - t0 >= 250, `dropped after the timeout (${closedAt - t0} ms)`);
    assert.ok(got === '' || got.startsWith('HTTP/1.1 408'), got);
  } finally {
    await r.close();
  }
});

test('50 concurrent clients are all answered', async () => {
  const r = await rig({ attach: { vsock: { cid: 3, udsPath: '/tmp/unused' } } });
  try {
    const calls = Array.from({ length: 50 }, (_, i) => apiCall(r.sock, i % 2 ? 'GET' : 'PUT', i % 2 ? '/scheduler' : '/scheduler', i % 2 ? undefined : { policy: i % 4 ? 'static' : 'none' }));
    const res = await Promise.all(calls);
    assert.is(res.filter((x) => x.status === 200).length, 50);
  } finally {
    await r.close();
  }
});

test('connections past maxConnections are refused, not queued forever', async () => {
  const r = await rig({ maxConnections: 2 });
  try {
    const holders = [connect(r.sock), connect(r.sock)];
    await Promise.all(holders.map((h) => new Promise((res) => h.on('connect', res))));
    await new Promise((res) => setTimeout(res, 50));
    const third = await apiCall(r.sock, 'GET', '/').then((x) => x.status, (e: Error) => e.message);
    assert.type(third, 'string', 'third connection closed by the server');
    for (const h of holders) h.destroy();
    await new Promise((res) => setTimeout(res, 50));
    assert.is((await apiCall(r.sock, 'GET', '/')).status, 200);
  } finally {
    await r.close();
  }
});

test.run();
