// Protocol robustness of the real agent (malformed, unknown, oversized frames end only
// their own connection), frame codec unit checks, and the hybrid-vsock connector.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { Readable } from 'node:stream';
import { join } from 'node:path';
import { AgentClient, AgentError } from '../../../vmm/agent/client';
import { hybridVsockConnector, unixConnector } from '../../../vmm/agent/connect';
import { AgentDoorbell } from '../../../vmm/agent/doorbell';
import { FrameDecoder, MAX_PAYLOAD, Msg, decodeError, encodeExec, encodeFrame, encodeHello, encodePing, encodeStdin } from '../../../vmm/agent/protocol';
import { RawSession, alive, header, startAgent, withTimeout, type RunningAgent } from './harness';

let agent: RunningAgent;

test.before(async () => {
  agent = await startAgent(['--max-conns', '12']);
});
test.after(async () => {
  await agent?.stop();
});

/** Sends `bytes` after a good HELLO and returns the ERROR the agent answers before closing. */
async function abuse(bytes: Buffer, hello = true): Promise<AgentError> {
  const s = await RawSession.open(agent.sock);
  if (hello) {
    s.send(encodeHello());
    await s.waitFor((f) => f.type === Msg.HELLO_ACK);
  }
  s.send(bytes);
  await withTimeout(s.closed, 5000, 'agent closing the connection');
  const f = await s.waitFor((f) => f.type === Msg.ERROR);
  return decodeError(f);
}

test('frame decoder splits across chunks and refuses oversized headers', () => {
  const a = encodeFrame(Msg.STDOUT, Buffer.from('hello'));
  const b = encodeFrame(Msg.EXIT, Buffer.alloc(12));
  const both = Buffer.concat([a, b]);
  const d = new FrameDecoder();
  const got = [...d.push(both.subarray(0, 3)), ...d.push(both.subarray(3, 15)), ...d.push(both.subarray(15))];
  assert.equal(got.map((f) => f.type), [Msg.STDOUT, Msg.EXIT]);
  assert.is(got[0].payload.toString(), 'hello');
  assert.throws(() => new FrameDecoder().push(header(Msg.STDOUT, MAX_PAYLOAD + 1)), (e: unknown) => e instanceof AgentError && e.code === 'PROTOCOL');
  assert.throws(() => encodeExec({ argv: [], env: [], cwd: '', clearEnv: false }), /argv is empty/);
  assert.throws(() => encodeExec({ argv: ['a\0b'], env: [], cwd: '', clearEnv: false }), /NUL/);
});

test('the byte example of docs/agent-protocol.md is what both sides send', async () => {
  const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
  assert.is(hex(encodeHello()), '0100000008000000' + '5453564101000100');
  assert.is(hex(encodePing(7n)), '0200000008000000' + '0700000000000000');
  const s = await RawSession.open(agent.sock);
  s.send(Buffer.concat([encodeHello(), encodePing(7n)]));
  await withTimeout(s.closed, 5000, 'PONG');
  const name = Buffer.from('tsvmm-agent 0.1.0').toString('hex');
  assert.equal(s.frames.map((f) => hex(encodeFrame(f.type, f.payload))), [
    '018000001d000000' + '5453564101000100' + '00001000' + name, // features: PUT_MKDIRS
    '0280000019000000' + '0700000000000000' + name,
  ]);
});

test('a malformed frame closes only its own connection', async () => {
  // A job in flight on another connection must survive the abuse below.
  const out: Buffer[] = [];
  const job = agent.client.exec({ argv: ['sh', '-c', 'read line; echo got:$line'], stdin: Readable.from(delayed('x\n', 300)), onStdout: (b) => out.push(b) });
  const bad = [
    Buffer.concat([header(Msg.PING, 3), Buffer.alloc(3)]), // PING payload must be 8 bytes
    Buffer.concat([header(Msg.PING, 8, 7), Buffer.alloc(8)]), // reserved field set
    Buffer.concat([header(Msg.EXEC, 12), Buffer.from([0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0])]), // argc huge
    Buffer.concat([header(Msg.EXEC, 16), Buffer.from([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0])]), // cwd runs past the end
  ];
  for (const b of bad) assert.is((await abuse(b)).code, 'PROTOCOL');
  assert.is((await abuse(Buffer.concat([header(Msg.HELLO, 8), Buffer.alloc(8)]), false)).code, 'PROTOCOL'); // bad magic
  assert.is((await abuse(Buffer.concat([header(Msg.PING, 8), Buffer.alloc(8)]), false)).code, 'STATE'); // no HELLO first
  assert.is((await abuse(Buffer.concat([header(Msg.STDIN, 1), Buffer.alloc(1)]))).code, 'STATE'); // not a request
  const r = await withTimeout(job, 10_000, 'job beside the abuse');
  assert.is(r.exitCode, 0);
  assert.is(Buffer.concat(out).toString(), 'got:x\n');
  assert.ok((await agent.client.ping()).agent.length > 0);
});

test('an unknown message type is refused', async () => {
  const e = await abuse(Buffer.concat([header(0x7777, 4), Buffer.alloc(4)]));
  assert.is(e.code, 'UNKNOWN_TYPE');
  assert.match(e.message, /0x7777/);
  assert.ok(e.remote);
});

test('an oversized length is refused before its payload is read', async () => {
  for (const len of [MAX_PAYLOAD + 1, 0xffffffff]) {
    const e = await abuse(header(Msg.PUT_DATA, len));
    assert.is(e.code, 'TOO_LARGE');
  }
  // A frame of exactly MAX_PAYLOAD is legal framing (here a PUT with a too-long path).
  const big = Buffer.alloc(MAX_PAYLOAD);
  big.writeUInt32LE(0o644, 0);
  big.writeUInt32LE(MAX_PAYLOAD - 12, 8);
  const e = await abuse(Buffer.concat([header(Msg.PUT, MAX_PAYLOAD), big]));
  assert.is(e.code, 'PROTOCOL');
  assert.match(e.message, /PUT path/);
});

test('stdin beyond the granted credit is a protocol error and kills the job', async () => {
  const s = await RawSession.open(agent.sock);
  s.send(encodeHello());
  s.send(encodeExec({ argv: ['sleep', '100'], env: [], cwd: '', clearEnv: false }));
  const started = await s.waitFor((f) => f.type === Msg.EXEC_STARTED);
  const pid = started.payload.readUInt32LE(0);
  const credit = started.payload.readUInt32LE(4);
  // One frame over the window: deterministic, as credit only grows after the agent wrote.
  s.send(encodeStdin(Buffer.alloc(credit + 1)));
  await withTimeout(s.closed, 5000, 'close after credit overrun');
  assert.is(decodeError(await s.waitFor((f) => f.type === Msg.ERROR)).code, 'PROTOCOL');
  assert.not.ok(alive(pid), 'the job was killed with its connection');
});

test('a host that disconnects mid-exec takes the job down with it', async () => {
  const s = await RawSession.open(agent.sock);
  s.send(encodeHello());
  s.send(encodeExec({ argv: ['sleep', '100'], env: [], cwd: '', clearEnv: false }));
  const pid = (await s.waitFor((f) => f.type === Msg.EXEC_STARTED)).payload.readUInt32LE(0);
  assert.ok(alive(pid));
  s.sock.destroy();
  const end = Date.now() + 5000;
  while (alive(pid) && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  assert.not.ok(alive(pid));
});

test('the connection limit answers BUSY and recovers', async () => {
  const held = await Promise.all(Array.from({ length: 12 }, () => RawSession.open(agent.sock)));
  await new Promise((r) => setTimeout(r, 100));
  try {
    for (let i = 0; i < 3; i++) {
      try {
        await agent.client.ping();
        assert.unreachable('should be busy');
      } catch (e) {
        assert.instance(e, AgentError);
        assert.is((e as AgentError).code, 'BUSY');
        assert.ok((e as AgentError).remote);
      }
    }
  } finally {
    held.forEach((h) => h.sock.destroy());
  }
  const end = Date.now() + 5000;
  for (;;) {
    try {
      await agent.client.ping();
      break;
    } catch (e) {
      if (Date.now() > end) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
});

test('hybrid vsock connector: CONNECT handshake, then the agent protocol', async () => {
  const uds = join(agent.dir, 'vsock.sock');
  const seen: string[] = [];
  // A stand-in for the VMM's vsock device: answers the handshake and splices to the agent.
  const server: Server = createServer((c: Socket) => {
    c.once('data', (d: Buffer) => {
      const line = d.toString().split('\n')[0];
      seen.push(line);
      if (line !== 'CONNECT 52') return void c.end('NO\n');
      const up = connect(agent.sock, () => {
        c.write('OK 1073741824\n');
        c.pipe(up).pipe(c);
      });
      up.on('error', () => c.destroy());
      c.on('error', () => up.destroy());
    });
  });
  await new Promise<void>((r) => server.listen(uds, r));
  try {
    const client = new AgentClient(hybridVsockConnector(uds));
    const out: Buffer[] = [];
    const r = await client.exec({ argv: ['echo', 'via vsock'], onStdout: (b) => out.push(b) });
    assert.is(r.exitCode, 0);
    assert.is(Buffer.concat(out).toString(), 'via vsock\n');
    try {
      await new AgentClient(hybridVsockConnector(uds, 53)).ping();
      assert.unreachable('port 53 has no listener');
    } catch (e) {
      assert.instance(e, AgentError);
      assert.is((e as AgentError).code, 'CONNECT');
      assert.match((e as Error).message, /refused/);
    }
    assert.equal(seen, ['CONNECT 52', 'CONNECT 53']);
  } finally {
    server.close();
  }
});

test('doorbell: a ring before the agent listens is retried, not lost; one byte per ring', async () => {
  const path = join(agent.dir, 'bell-test.sock');
  const errors: Error[] = [];
  const bell = new AgentDoorbell(unixConnector(path), { retryMs: 20, onError: (e) => errors.push(e) });
  bell.ring();
  await new Promise((r) => setTimeout(r, 100));
  assert.ok(errors.length >= 2, 'connect was retried');
  const got: number[] = [];
  const server = createServer((c) => c.on('data', (d: Buffer) => got.push(...d)));
  await new Promise<void>((r) => server.listen(path, r));
  try {
    const end = Date.now() + 3000;
    while (got.length < 1 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    bell.ring();
    bell.ring();
    while (got.length < 3 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    assert.equal(got, [1, 1, 1]);
    assert.is(bell.rings, 3);
  } finally {
    bell.close();
    server.close();
  }
});

async function* delayed(text: string, ms: number): AsyncGenerator<Buffer> {
  await new Promise((r) => setTimeout(r, ms));
  yield Buffer.from(text);
}

test.run();
