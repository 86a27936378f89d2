// The vsock benchmark's helper (guest/vsock-bench.c) against a Node peer over Unix sockets:
// its wire format, its SHA-256 (checked against node:crypto), the hybrid CONNECT handshake
// with a retry, that a wrong digest fails, and both ends of the concurrent echo. No KVM needed.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectRoot } from '../../../vmm/default-guest';

const root = projectRoot();
const helper = execFileSync(join(root, 'tools/bench/guest-build.sh'), { encoding: 'utf8' }).trim();
const dir = mkdtempSync(join(tmpdir(), 'tsvmm-bench-test-'));
const LINE = /^vsock-bench: role=(send|recv|echo-send|echo) bytes=(\d+) secs=([\d.]+) mib_s=([\d.]+) sha256=([0-9a-f]{64}) peer_sha256=([0-9a-f]*) ok=([01])$/m;

function runHelper(args: string[]): { done: Promise<{ code: number | null; out: string; err: string }>; listening: Promise<void>; kill: () => void } {
  const child = spawn(helper, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let onListen: () => void = () => {};
  const listening = new Promise<void>((r) => (onListen = r));
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    err += d;
    if (err.includes('listening')) onListen();
  });
  const done = new Promise<{ code: number | null; out: string; err: string }>((resolve) => child.on('close', (code) => resolve({ code, out, err })));
  return { done, listening, kill: () => child.kill() };
}

/** Reads exactly n bytes (or up to EOF) from a socket. */
function reader(sock: Socket): (n: number) => Promise<Buffer> {
  let buf = Buffer.alloc(0);
  let ended = false;
  let wake: () => void = () => {};
  sock.on('data', (d: Buffer) => { buf = Buffer.concat([buf, d]); wake(); });
  sock.on('end', () => { ended = true; wake(); });
  return async (n) => {
    while (buf.length < n && !ended) await new Promise<void>((r) => (wake = r));
    const out = buf.subarray(0, n);
    buf = buf.subarray(out.length);
    return out;
  };
}

/** The sender's data: xorshift64 words, little endian, as vsock-bench.c generates it. */
function expectedData(n: number): Buffer {
  const b = Buffer.alloc(Math.ceil(n / 8) * 8);
  let x = 0x9e3779b97f4a7c15n;
  const m = (1n << 64n) - 1n;
  for (let i = 0; i < b.length; i += 8) {
    x ^= (x << 13n) & m; x ^= x >> 7n; x ^= (x << 17n) & m;
    b.writeBigUInt64LE(x, i);
  }
  return b.subarray(0, n);
}

test('sender: hybrid CONNECT (refused once, then OK), header, data and digest match node:crypto', async () => {
  const bytes = 1_000_003;
  const path = join(dir, 'h.sock');
  let attempts = 0;
  let received: { sha: string; hdrSha: string; len: bigint } | null = null;
  const server = createServer((sock) => {
    const read = reader(sock);
    void (async () => {
      const line = (await read(13)).toString();
      assert.is(line, 'CONNECT 5001\n');
      // The first attempt looks like a guest that does not listen yet: closed without OK.
      if (++attempts === 1) return sock.destroy();
      sock.write('OK 1073741824\n');
      const hdr = await read(72);
      const len = hdr.readBigUInt64LE(0);
      const data = await read(Number(len));
      const sha = createHash('sha256').update(data).digest('hex');
      received = { sha, hdrSha: hdr.subarray(8).toString(), len };
      sock.write('A');
      sock.end(`${sha}\n`);
    })();
  });
  await new Promise<void>((r) => server.listen(path, r));
  const { done } = runHelper(['send', String(bytes), `uds-connect:${path}:5001`]);
  const r = await done;
  server.close();
  assert.is(r.code, 0, r.err);
  assert.is(attempts, 2);
  assert.ok(received);
  const got = received as unknown as { sha: string; hdrSha: string; len: bigint };
  assert.is(got.len, BigInt(bytes));
  assert.is(got.sha, createHash('sha256').update(expectedData(bytes)).digest('hex'));
  assert.is(got.hdrSha, got.sha);
  const m = LINE.exec(r.out);
  assert.ok(m, r.out);
  assert.is(m![1], 'send');
  assert.is(Number(m![2]), bytes);
  assert.is(m![5], got.sha);
  assert.is(m![6], got.sha);
  assert.is(m![7], '1');
});

async function sendTo(path: string, data: Buffer, claimedSha: string): Promise<{ ack: string; sha: string }> {
  const sock = createConnection(path);
  await new Promise<void>((r) => sock.on('connect', r));
  const read = reader(sock);
  const hdr = Buffer.alloc(72);
  hdr.writeBigUInt64LE(BigInt(data.length), 0);
  hdr.write(claimedSha, 8);
  sock.write(hdr);
  sock.write(data);
  const ack = (await read(1)).toString();
  const sha = (await read(65)).toString().trim();
  sock.end();
  return { ack, sha };
}

test('receiver: uds-listen, acks, returns the digest and checks the sender\'s', async () => {
  const path = join(dir, 'r.sock_5002');
  const data = randomBytes(3 * 65536 + 17);
  const sha = createHash('sha256').update(data).digest('hex');
  const h = runHelper(['recv', `uds-listen:${path}`]);
  await h.listening;
  const reply = await sendTo(path, data, sha);
  const r = await h.done;
  assert.is(reply.ack, 'A');
  assert.is(reply.sha, sha);
  assert.is(r.code, 0, r.err);
  const m = LINE.exec(r.out);
  assert.ok(m, r.out);
  assert.equal([m![1], Number(m![2]), m![5], m![7]], ['recv', data.length, sha, '1']);
});

test('receiver: a wrong claimed digest is ok=0 and exit status 1', async () => {
  const path = join(dir, 'bad.sock');
  const data = randomBytes(1000);
  const h = runHelper(['recv', `uds-listen:${path}`]);
  await h.listening;
  const reply = await sendTo(path, data, '0'.repeat(64));
  const r = await h.done;
  assert.is(reply.sha, createHash('sha256').update(data).digest('hex'));
  assert.is(r.code, 1);
  assert.match(r.out, /ok=0/);
});

test('echo-send: streams while reading the echo back (hybrid CONNECT), byte-exact and digest checked', async () => {
  const bytes = 2 * 1048576 + 5;
  const path = join(dir, 'e.sock');
  const server = createServer((sock) => {
    let line = '';
    let echoing = false;
    // Echo with backpressure: while the helper does not read, we stop reading too. A helper
    // that wrote everything before reading would deadlock against this (2 MiB is far more
    // than both socket buffers) and never print its line.
    const echo = (d: Buffer) => {
      if (d.length && !sock.write(d)) {
        sock.pause();
        sock.once('drain', () => sock.resume());
      }
    };
    sock.on('data', (d: Buffer) => {
      if (echoing) return echo(d);
      line += d.toString('latin1');
      const nl = line.indexOf('\n');
      if (nl < 0) return;
      assert.is(line.slice(0, nl), 'CONNECT 5003');
      echoing = true;
      sock.write('OK 1073741824\n');
      echo(Buffer.from(line.slice(nl + 1), 'latin1'));
    });
    sock.on('end', () => sock.end());
  });
  await new Promise<void>((r) => server.listen(path, r));
  const h = runHelper(['echo-send', String(bytes), `uds-connect:${path}:5003`]);
  const deadlock = setTimeout(h.kill, 30_000);
  const r = await h.done;
  clearTimeout(deadlock);
  server.close();
  assert.is(r.code, 0, r.err);
  const m = LINE.exec(r.out);
  assert.ok(m, r.out);
  const sha = createHash('sha256').update(expectedData(bytes)).digest('hex');
  assert.equal([m![1], Number(m![2]), m![5], m![6], m![7]], ['echo-send', bytes, sha, sha, '1']);
});

test('echo-send: a corrupted echo is ok=0 and exit status 1', async () => {
  const path = join(dir, 'ebad.sock');
  const server = createServer((sock) => {
    let ok = false;
    sock.on('data', (d: Buffer) => {
      if (!ok) {
        ok = true;
        sock.write('OK 1\n');
        d = d.subarray(d.indexOf(10) + 1);
      }
      const copy = Buffer.from(d);
      if (copy.length > 100) copy[100]! ^= 1;
      sock.write(copy);
    });
    sock.on('end', () => sock.end());
  });
  await new Promise<void>((r) => server.listen(path, r));
  const r = await runHelper(['echo-send', '100000', `uds-connect:${path}:5003`]).done;
  server.close();
  assert.is(r.code, 1, r.out + r.err);
  assert.match(r.out, /ok=0/);
});

test('echo: returns header and data while they arrive, checks the digest', async () => {
  const path = join(dir, 'echo.sock_5003');
  const data = randomBytes(3 * 65536 + 11);
  const sha = createHash('sha256').update(data).digest('hex');
  const h = runHelper(['echo', `uds-listen:${path}`]);
  await h.listening;
  const sock = createConnection(path);
  await new Promise<void>((r) => sock.on('connect', r));
  const read = reader(sock);
  const hdr = Buffer.alloc(72);
  hdr.writeBigUInt64LE(BigInt(data.length), 0);
  hdr.write(sha, 8);
  sock.write(hdr);
  // The first half must come back before the second half is sent: an echo, not a store and forward.
  const half = data.length >> 1;
  sock.write(data.subarray(0, half));
  assert.equal(await read(72 + half), Buffer.concat([hdr, data.subarray(0, half)]));
  sock.write(data.subarray(half));
  assert.equal(await read(data.length - half), data.subarray(half));
  sock.end();
  const r = await h.done;
  assert.is(r.code, 0, r.err);
  const m = LINE.exec(r.out);
  assert.ok(m, r.out);
  assert.equal([m![1], Number(m![2]), m![5], m![6], m![7]], ['echo', data.length, sha, sha, '1']);
});

test('usage errors exit 2', async () => {
  for (const args of [[], ['send', '12x', 'listen:1'], ['recv', 'bogus:1'], ['echo-send', '1y', 'listen:1'], ['echo']]) {
    const r = await runHelper(args).done;
    assert.is(r.code, 2, args.join(' '));
  }
});

test.after(() => rmSync(dir, { recursive: true, force: true }));
test.run();
