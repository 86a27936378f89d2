// virtio-vsock with the stock kernel's driver and Firecracker's host protocol: bulk data both
// ways with matching SHA-256, 200 concurrent connections, guest-initiated connections to the
// host's PATH_<port> listeners (byte-exact both ways), and failures that end one connection
// only (a client dying before its CONNECT line, a port nobody listens on).

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash, randomBytes } from 'node:crypto';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { agentOf, startVm } from './helpers';
import type { AgentClient } from '../../vmm/agent/client';

const MiB = 1024 * 1024;
let vm: Awaited<ReturnType<typeof startVm>>;
let agent: AgentClient;

test.before(async () => {
  vm = await startVm(['--memory', '512M', '--vcpus', '2', '--quiet']);
  agent = await agentOf(vm.uds);
});

test.after(async () => {
  await vm.stop();
});

async function run(argv: string[], stdin?: Uint8Array): Promise<{ code: number | null; out: Buffer; err: string }> {
  const out: Buffer[] = [];
  let err = '';
  const r = await agent.exec({ argv, stdin, onStdout: (c) => out.push(c), onStderr: (c) => (err += c) });
  return { code: r.exitCode, out: Buffer.concat(out), err };
}

test('64 MiB host → guest arrive intact (SHA-256)', async () => {
  const data = randomBytes(64 * MiB);
  const r = await run(['sha256sum'], data);
  assert.is(r.code, 0, r.err);
  assert.is(r.out.toString().split(' ')[0], createHash('sha256').update(data).digest('hex'));
});

test('64 MiB guest → host arrive intact (SHA-256)', async () => {
  const r = await run(['sh', '-c', 'head -c 67108864 /dev/urandom > /tmp/blob && cat /tmp/blob && sha256sum /tmp/blob >&2 && rm /tmp/blob']);
  assert.is(r.code, 0, r.err);
  assert.is(r.out.length, 64 * MiB);
  assert.is(r.err.split(' ')[0], createHash('sha256').update(r.out).digest('hex'));
});

test('200 concurrent connections', async () => {
  const results = await Promise.all(Array.from({ length: 200 }, (_, i) => run(['sh', '-c', `sleep 1; echo ${i}`])));
  results.forEach((r, i) => {
    assert.is(r.code, 0, r.err);
    assert.is(r.out.toString(), `${i}\n`);
  });
});

test('a client that dies before its CONNECT line, or names a dead port, ends alone; the refusal comes within 2 s, without OK', async () => {
  const dying = createConnection(vm.uds);
  await new Promise((r) => dying.once('connect', r));
  dying.write('CONNE');
  dying.destroy();
  // Nobody listens on guest port 9999: the guest answers RST and tsvmm closes the client's
  // socket. Waiting for the guest has its own 2 s limit, so a close this fast is the RST's.
  const refused = createConnection(vm.uds);
  await new Promise((r) => refused.once('connect', r));
  let got = '';
  refused.on('data', (b) => (got += b.toString('latin1')));
  const t0 = Date.now();
  refused.write('CONNECT 9999\n');
  const closed = await Promise.race([
    new Promise<number>((r) => refused.once('close', () => r(Date.now() - t0))),
    new Promise<'open'>((r) => setTimeout(() => r('open'), 10_000).unref()),
  ]);
  refused.destroy();
  assert.ok(closed !== 'open', 'the refused connection is still open after 10 s');
  assert.ok((closed as number) < 2000, `closed after ${closed} ms, not within 2 s`);
  assert.is(got, '', 'nothing, and no OK, before the close');
  const r = await run(['echo', 'still fine']);
  assert.is(r.out.toString(), 'still fine\n');
});

/** The bytes guest/vsock-bench.c sends (the little-endian words of its xorshift64 stream), made again here. */
function benchBytes(n: number): Buffer {
  const out = Buffer.alloc(n);
  const word = Buffer.alloc(8);
  const M = (1n << 64n) - 1n;
  let x = 0x9e3779b97f4a7c15n;
  for (let i = 0; i < n; i += 8) {
    x ^= (x << 13n) & M;
    x ^= x >> 7n;
    x ^= (x << 17n) & M;
    word.writeBigUInt64LE(x);
    word.copy(out, i, 0, Math.min(8, n - i));
  }
  return out;
}

/** Listens at the host end of guest-initiated connections to `port` (PATH_<port>); the first connection. */
function listenFor(port: number): { path: string; conn: Promise<Socket>; close: () => void } {
  const path = `${vm.uds}_${port}`;
  let server: Server;
  const conn = new Promise<Socket>((resolve) => {
    server = createServer((s) => resolve(s));
    server.listen(path);
  });
  return { path, conn, close: () => server.close() };
}

/** Reads exactly n bytes from a paused-or-flowing socket. */
function readExactly(s: Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let have = 0;
    const onData = (b: Buffer) => {
      parts.push(b);
      have += b.length;
      if (have < n) return;
      s.off('data', onData);
      const all = Buffer.concat(parts);
      if (all.length > n) s.unshift(all.subarray(n));
      resolve(all.subarray(0, n));
    };
    s.on('data', onData);
    s.once('end', () => have < n && reject(new Error(`EOF after ${have} of ${n} bytes`)));
  });
}

test('guest-initiated, guest → host: the listener at PATH_5001 gets every byte the guest sent', async () => {
  const n = 3 * MiB + 123;
  const l = listenFor(5001);
  try {
    // guest/vsock-bench connects to CID 2 (the host), port 5001: u64 length, its SHA-256 in hex, the bytes.
    const guest = run(['vsock-bench', 'send', String(n), 'connect:2:5001']);
    const s = await l.conn;
    const hdr = await readExactly(s, 8 + 64);
    assert.is(Number(hdr.readBigUInt64LE(0)), n);
    const data = await readExactly(s, n);
    assert.ok(data.equals(benchBytes(n)), 'the bytes are exactly the ones the guest program generated');
    const digest = createHash('sha256').update(data).digest('hex');
    assert.is(hdr.subarray(8).toString('latin1'), digest, "the guest's own digest of what it sent");
    s.write(`A${digest}\n`);
    const r = await guest;
    s.destroy();
    assert.is(r.code, 0, r.err + r.out.toString());
    assert.match(r.out.toString(), / ok=1$/m);
  } finally {
    l.close();
  }
});

test('guest-initiated, host → guest: the guest receives every byte the listener at PATH_5002 sent', async () => {
  const data = randomBytes(2 * MiB + 77);
  const digest = createHash('sha256').update(data).digest('hex');
  const l = listenFor(5002);
  try {
    const guest = run(['vsock-bench', 'recv', 'connect:2:5002']);
    const s = await l.conn;
    const hdr = Buffer.alloc(8);
    hdr.writeBigUInt64LE(BigInt(data.length));
    s.write(Buffer.concat([hdr, Buffer.from(digest, 'latin1'), data]));
    const reply = await readExactly(s, 1 + 65);
    assert.is(reply.toString('latin1'), `A${digest}\n`, "the guest's SHA-256 of what it received is ours");
    s.end();
    const r = await guest;
    assert.is(r.code, 0, r.err + r.out.toString());
    assert.match(r.out.toString(), new RegExp(`role=recv bytes=${data.length} .* ok=1$`, 'm'));
  } finally {
    l.close();
  }
});

test('a guest process killed mid-stream ends its connection only', async () => {
  const big = agent.start({ argv: ['cat', '/dev/zero'], onStdout: () => {} });
  const pid = await big.pid;
  await run(['kill', '-9', String(pid)]);
  const res = await big.result;
  assert.is(res.signal, 'SIGKILL');
  const r = await run(['echo', 'ok']);
  assert.is(r.out.toString(), 'ok\n');
});

test.run();
