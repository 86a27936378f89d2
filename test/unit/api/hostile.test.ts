// Careless or hostile input through every door (the API, --config-file, --vsock, the vsock
// device itself): tsvmm must never delete a file that is not its own socket, never bind or
// connect a path libuv would truncate, never take a reserved CID, never die on a malformed
// request line, and say what is wrong with a size it cannot use.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { needs } from '../../needs';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, readFileSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { apiCall } from '../../../vmm/api/client';
import { ApiServer } from '../../../vmm/api/http';
import { readConfigFile } from '../../../vmm/api/resources';
import { ConfigError } from '../../../vmm/config';
import { parseVsockSpec, VsockSpecError } from '../../../devices/virtio/vsock/spec';
import { VirtioVsock } from '../../../devices/virtio/vsock/device';
import { VsockSetupError } from '../../../devices/virtio/vsock/errors';
import { fakeKernel, rawExchange, rig, tmp } from './fake';

const json = (t: string) => JSON.parse(t) as { fault_message: string };
const THESIS = '\\documentclass{article} % four years of work\n';

async function rejects(p: Promise<unknown>, re: RegExp): Promise<Error> {
  try {
    await p;
  } catch (e) {
    assert.match((e as Error).message, re);
    return e as Error;
  }
  throw new Error(`expected a rejection matching ${re}`);
}

function throws(fn: () => unknown, re: RegExp): Error {
  try {
    fn();
  } catch (e) {
    assert.match((e as Error).message, re);
    return e as Error;
  }
  throw new Error(`expected an error matching ${re}`);
}

/** A Unix socket listener in another process (python3), backlog 0, that never accepts. */
async function stuckListener(path: string): Promise<ChildProcess> {
  const p = spawn('python3', ['-c', 'import socket,sys,time\ns=socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen(0)\nprint("up",flush=True)\ntime.sleep(60)', path], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve) => p.stdout!.once('data', () => resolve()));
  return p;
}

/** Fills a listener's backlog with connections it never accepts; the next connect fails with EAGAIN. */
async function fillBacklog(path: string): Promise<net.Socket[]> {
  const held: net.Socket[] = [];
  for (let i = 0; i < 8; i++) {
    const s = net.connect(path);
    const code = await new Promise<string | undefined>((r) => s.once('connect', () => r(undefined)).once('error', (e: NodeJS.ErrnoException) => r(e.code)));
    if (code !== undefined) {
      assert.is(code, 'EAGAIN');
      return held;
    }
    held.push(s);
  }
  throw new Error('the backlog never filled');
}

// ---- 1: a uds_path that is someone's file ----

test('vsock uds_path naming a regular file is refused by the API, the config file and the device; the file survives', async () => {
  const r = await rig();
  try {
    const thesis = join(r.dir, 'thesis.tex');
    writeFileSync(thesis, THESIS);
    const x = await apiCall(r.sock, 'PUT', '/vsock', { guest_cid: 3, uds_path: thesis });
    assert.is(x.status, 400, x.text);
    assert.match(json(x.text).fault_message, /vsock.uds_path .*thesis.tex: exists and is not a socket/);
    const cfg = join(r.dir, 'vm.json');
    writeFileSync(cfg, JSON.stringify({ 'boot-source': { kernel_image_path: r.kernel }, vsock: { guest_cid: 3, uds_path: thesis } }));
    const e = throws(() => readConfigFile(cfg), /--config-file .*vsock.uds_path .*exists and is not a socket/);
    assert.instance(e, ConfigError);
    throws(() => parseVsockSpec(`cid=3,uds=${thesis}`), /not a socket/);
    // Whatever door skipped the check: the device itself never replaces it.
    const dev = new VirtioVsock({ guestCid: 3, udsPath: thesis });
    await rejects(dev.muxer.listen(), /exists and is not a socket/);
    assert.is(readFileSync(thesis, 'utf8'), THESIS);
    assert.ok(statSync(thesis).isFile());
  } finally {
    await r.close();
  }
});

// ---- 2: live, foreign and re-used sockets ----

test('a live socket whose backlog is full is not stale: the API and the device refuse it, it survives', async () => {
  const dir = tmp();
  const path = join(dir, 'busy.sock');
  const py = await stuckListener(path);
  const held = await fillBacklog(path);
  try {
    await rejects(ApiServer.listen({ path, handle: async () => ({ status: 204 }) }), /--api-sock .*busy.sock: may be in use \(connect: EAGAIN\)/);
    const dev = new VirtioVsock({ guestCid: 3, udsPath: path });
    await rejects(dev.muxer.listen(), /may be in use/);
    assert.ok(statSync(path).isSocket(), 'still there');
  } finally {
    for (const s of held) s.destroy();
    py.kill();
  }
});

needs(process.getuid?.() === 0 ? undefined : 'needs root, to make a socket of another user (chown)')('another user\'s socket is never replaced, even when nobody listens on it', async () => {
  const dir = tmp();
  const path = join(dir, 'theirs.sock');
  await promisify(execFile)('python3', ['-c', 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', path]);
  chownSync(path, 65534, 65534);
  await rejects(ApiServer.listen({ path, handle: async () => ({ status: 204 }) }), /socket of user 65534, not ours/);
  const dev = new VirtioVsock({ guestCid: 3, udsPath: path });
  await rejects(dev.muxer.listen(), /socket of user 65534, not ours/);
  throws(() => parseVsockSpec(`cid=3,uds=${path}`), /not ours/);
  assert.ok(statSync(path).isSocket());
});

test('at close and at exit, a socket path is removed only while it is still ours (same inode)', async () => {
  const dir = tmp();
  for (const kind of ['api', 'vsock'] as const) {
    const path = join(dir, `${kind}.sock`);
    const close = kind === 'api'
      ? await ApiServer.listen({ path, handle: async () => ({ status: 204 }) }).then((s) => () => s.close())
      : await VirtioVsock.create({ guestCid: 3, udsPath: path }).then((d) => () => d.close());
    // Someone removed our socket and another instance now serves at the same path.
    unlinkSync(path);
    const other = net.createServer();
    await new Promise<void>((r) => other.listen(path, r));
    await close();
    assert.ok(existsSync(path), `${kind}: the other instance's socket was removed`);
    const c = net.connect(path);
    await new Promise<void>((resolve, reject) => c.once('connect', resolve).once('error', reject));
    c.destroy();
    await new Promise<void>((r) => other.close(() => r()));
  }
});

// ---- 3: a malformed request line ----

test('a request line that is not a path (GET http://[) is answered 400; the server lives on', async () => {
  const r = await rig();
  try {
    const onRejection = (e: unknown) => { throw e; };
    process.on('unhandledRejection', onRejection);
    for (const target of ['http://[', 'http://x/', '*', '//evil/', 'ftp://a:b@[::1']) {
      const reply = await rawExchange(r.sock, `GET ${target} HTTP/1.1\r\nHost: x\r\n\r\n`);
      assert.match(reply, /^HTTP\/1.1 400 /, `${target}: ${reply}`);
      assert.match(reply, /is not a path/);
    }
    await new Promise((res) => setTimeout(res, 20));
    process.off('unhandledRejection', onRejection);
    assert.is((await apiCall(r.sock, 'GET', '/')).status, 200);
  } finally {
    await r.close();
  }
});

// ---- 8: truncated paths, reserved CIDs ----

test('uds paths that would not fit sun_path with "_<port>", and CID 2^32-1, are refused at every door', async () => {
  const r = await rig();
  try {
    // 96 bytes fit (with "_4294967295", 107); 97 would be truncated by libuv on a guest connect.
    const base = join(r.dir, 'v');
    const fits = base + 'x'.repeat(96 - Buffer.byteLength(base));
    const over = fits + 'x';
    let x = await apiCall(r.sock, 'PUT', '/vsock', { guest_cid: 3, uds_path: over });
    assert.is(x.status, 400);
    assert.match(json(x.text).fault_message, /vsock.uds_path .*: is 97 bytes; at most 96 fit/);
    x = await apiCall(r.sock, 'PUT', '/vsock', { guest_cid: 3, uds_path: fits });
    assert.is(x.status, 204, x.text);
    x = await apiCall(r.sock, 'PUT', '/vsock', { guest_cid: 4294967295, uds_path: fits });
    assert.is(x.status, 400);
    assert.match(json(x.text).fault_message, /vsock.guest_cid: 4294967295 is above the maximum 4294967294/);
    const cfg = join(r.dir, 'vm.json');
    writeFileSync(cfg, JSON.stringify({ 'boot-source': { kernel_image_path: fakeKernel(r.dir) }, vsock: { guest_cid: 3, uds_path: over } }));
    throws(() => readConfigFile(cfg), /is 97 bytes/);
    assert.instance(throws(() => parseVsockSpec(`cid=3,uds=${over}`), /is 97 bytes/), VsockSpecError);
    assert.instance(throws(() => new VirtioVsock({ guestCid: 3, udsPath: over }), /over 96 bytes/), VsockSetupError);
    // The longest path works end to end: bound (through a short temporary name), connectable.
    const dev = await VirtioVsock.create({ guestCid: 3, udsPath: fits });
    assert.ok(statSync(fits).isSocket());
    await dev.close();
    assert.not.ok(existsSync(fits));
  } finally {
    await r.close();
  }
});

// ---- 9: sizes ----

test('mem_size_mib 2^40 is "larger than this host", not "too small"', async () => {
  const r = await rig();
  try {
    const x = await apiCall(r.sock, 'PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 2 ** 40 });
    assert.is(x.status, 400);
    assert.match(json(x.text).fault_message, /machine-config.mem_size_mib: 1073741824G is larger than this host's/);
    assert.not.match(json(x.text).fault_message, /too small/);
  } finally {
    await r.close();
  }
});

test.run();
