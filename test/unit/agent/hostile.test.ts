// The host's agent client against a hostile agent (a fake one on a Unix socket that answers
// HELLO and then misbehaves): nothing it does may grow host memory without bound or hang the
// client. Regression tests for `exec --put` growing RSS 281 -> 857 MiB in 4 s and hanging.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentClient, AgentError, type AgentClientOptions } from '../../../vmm/agent/client';
import { unixConnector } from '../../../vmm/agent/connect';
import { encodeFrame, FrameDecoder, MAGIC, MAX_PAYLOAD, Msg } from '../../../vmm/agent/protocol';
import { withTimeout } from './harness';

let dir = '';
let n = 0;

type Script = (s: net.Socket, request: number) => void;

/** A fake agent: answers HELLO, then runs `script` on the first request frame it sees. */
async function hostileAgent(script: Script): Promise<{ path: string; written: () => number; close: () => Promise<void> }> {
  const path = join(dir, `a${n++}.sock`);
  let written = 0;
  const conns = new Set<net.Socket>();
  const srv = net.createServer((s) => {
    conns.add(s);
    s.on('close', () => conns.delete(s));
    s.on('error', () => {});
    const dec = new FrameDecoder();
    let requested = false;
    s.on('data', (d: Buffer) => {
      if (requested) return;
      for (const f of dec.push(d)) {
        if (f.type === Msg.HELLO) {
          const p = Buffer.alloc(12 + 4);
          p.writeUInt32LE(MAGIC, 0);
          p.writeUInt16LE(1, 4);
          p.writeUInt32LE(MAX_PAYLOAD, 8);
          p.write('evil', 12);
          s.write(encodeFrame(Msg.HELLO_ACK, p));
        } else if (!requested) {
          requested = true;
          script(s, f.type);
          return;
        }
      }
    });
    const write = s.write.bind(s);
    s.write = ((chunk: Buffer, ...rest: never[]) => {
      written += chunk.length;
      return write(chunk, ...rest);
    }) as typeof s.write;
  });
  await new Promise<void>((r) => srv.listen(path, r));
  return {
    path,
    written: () => written,
    close: () => {
      for (const c of conns) c.destroy();
      return new Promise((r) => srv.close(() => r()));
    },
  };
}

/** Stops reading from the host and writes STDOUT frames as fast as the socket takes them. */
const stopReadingAndFlood: Script = (s) => {
  s.pause();
  const frame = encodeFrame(Msg.STDOUT, Buffer.alloc(MAX_PAYLOAD, 0x41));
  const pump = (): void => {
    while (!s.destroyed && s.write(frame));
    if (!s.destroyed) s.once('drain', pump);
  };
  pump();
};

/** Stops reading and never answers. */
const stall: Script = (s) => s.pause();

const client = (path: string, limits: AgentClientOptions = {}) => new AgentClient(unixConnector(path), limits);

async function rejection(p: Promise<unknown>, ms: number, what: string): Promise<AgentError> {
  try {
    await withTimeout(p, ms, what);
  } catch (e) {
    if (e instanceof AgentError) return e;
    throw e;
  }
  throw new Error(`${what}: resolved, expected an AgentError`);
}

test.before(() => { dir = mkdtempSync(join(tmpdir(), 'tsvmm-hostile-')); });
test.after(() => { rmSync(dir, { recursive: true, force: true }); });

test('put: an agent that stops reading and floods frames ends the put at once, host memory bounded', async () => {
  const a = await hostileAgent(stopReadingAndFlood);
  const rss0 = process.memoryUsage().rss;
  const e = await rejection(client(a.path).put(Buffer.alloc(256 << 20), '/tmp/x'), 5000, 'put to a flooding agent');
  assert.is(e.code, 'PROTOCOL');
  assert.match(e.message, /STDOUT, expected PUT_DONE/);
  // What the agent got written before the client hung up: the socket buffers, not hundreds of MiB.
  assert.ok(a.written() < 64 << 20, `the client took ${a.written()} bytes of unrequested frames`);
  assert.ok(process.memoryUsage().rss - rss0 < 400 << 20, 'RSS stayed bounded');
  await a.close();
});

test('put: an agent that stops reading and says nothing fails with TIMEOUT after the stall timeout', async () => {
  const a = await hostileAgent(stall);
  const t0 = Date.now();
  const e = await rejection(client(a.path, { stallTimeoutMs: 300 }).put(Buffer.alloc(64 << 20), '/tmp/x'), 5000, 'put to a stalled agent');
  assert.is(e.code, 'TIMEOUT');
  assert.ok(Date.now() - t0 >= 250, 'not before the stall timeout');
  await a.close();
});

test('put: aborting (exec --timeout, a signal) ends a stalled put with ABORTED', async () => {
  const a = await hostileAgent(stall);
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 100);
  const e = await rejection(client(a.path).put(Buffer.alloc(64 << 20), '/tmp/x', 0o644, { signal: ac.signal }), 5000, 'aborted put');
  assert.is(e.code, 'ABORTED');
  await a.close();
});

test('exec: an agent that never reports the exit after an abort releases the caller after the grace period', async () => {
  const a = await hostileAgent((s) => {
    const p = Buffer.alloc(8);
    p.writeUInt32LE(4242, 0);
    p.writeUInt32LE(65536, 4);
    s.write(encodeFrame(Msg.EXEC_STARTED, p)); // then silence, but it keeps reading
  });
  const ac = new AbortController();
  const h = client(a.path, { abortGraceMs: 300 }).start({ argv: ['sleep', '1000'], signal: ac.signal });
  assert.is(await withTimeout(h.pid, 5000, 'EXEC_STARTED'), 4242);
  ac.abort();
  const e = await rejection(h.result, 5000, 'aborted exec');
  assert.is(e.code, 'ABORTED');
  await a.close();
});

test('exec: frames nobody consumes (EXIT, then a flood while stdin is stuck) stop the reading at the queue limit', async () => {
  // After EXIT the client waits for its stdin sender, stuck in a send the agent never takes;
  // meanwhile the agent floods frames nobody asked for. They are held up to the queue limit,
  // then the client stops reading and the flood waits in the agent's socket.
  const a = await hostileAgent((s) => {
    s.pause();
    const p = Buffer.alloc(8);
    p.writeUInt32LE(7, 0);
    p.writeUInt32LE(256 << 20, 4); // credit for all of our stdin
    s.write(encodeFrame(Msg.EXEC_STARTED, p));
    const exit = Buffer.alloc(12);
    exit.writeUInt32LE(1, 0);
    setTimeout(() => {
      s.write(encodeFrame(Msg.EXIT, exit));
      stopReadingAndFlood(s, 0);
    }, 50);
  });
  const c = client(a.path, { maxQueuedBytes: 2 << 20, stallTimeoutMs: 1500 });
  const r = await withTimeout(c.exec({ argv: ['cat'], stdin: Buffer.alloc(128 << 20) }), 10_000, 'exec');
  assert.equal(r, { exitCode: 0, signal: null, coreDumped: false });
  // 1.5 s of flooding: the queue limit plus socket buffers, not a GiB.
  assert.ok(a.written() < 32 << 20, `the client took ${a.written()} bytes it never consumed`);
  await a.close();
});

test.run();
