// Fuzz target: the host parsing what a guest agent sends (vmm/agent/client.ts + protocol.ts).
// A fake agent on an in-memory stream answers HELLO properly most of the time, then sends a
// mutated mix of every agent -> host frame (valid, truncated, oversized lengths, wrong types,
// junk), split at random points, and ends, resets or goes silent. Invariants: every request
// (ping, exec, put, get) settles, with a result or an AgentError and nothing else, nothing is
// left as an unhandled rejection, and a silent agent is ended by the caller's abort.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Duplex } from 'node:stream';
import { AgentClient, AgentError } from '../../../vmm/agent/client';
import { encodeFrame, MAGIC, MAX_PAYLOAD, Msg } from '../../../vmm/agent/protocol';
import { concat, edgeU32, fuzz, mutate, type Rng } from './lib';

/** Two connected in-memory Duplex ends. */
function pair(): [Duplex, Duplex] {
  let a!: Duplex;
  let b!: Duplex;
  const make = (peer: () => Duplex) => new Duplex({
    read() {},
    write(chunk: Buffer, _e, cb) { peer().push(chunk); cb(); },
    final(cb) { peer().push(null); cb(); },
    destroy(err, cb) { const p = peer(); if (!p.destroyed) p.destroy(); cb(err); },
  });
  a = make(() => b);
  b = make(() => a);
  return [a, b];
}

const u32 = (...v: number[]): Uint8Array => { const b = Buffer.alloc(4 * v.length); v.forEach((x, i) => b.writeUInt32LE(x >>> 0, 4 * i)); return b; };

/** HELLO_ACK with a features field an old agent (0), a current one (PUT_MKDIRS) or a future one sends. */
function helloAck(rng: Rng): Uint8Array {
  const features = rng.pick([0, 1, 0xffff, rng.int(0x10000)]);
  return encodeFrame(Msg.HELLO_ACK, concat(u32(MAGIC), Buffer.from([1, 0, features & 0xff, features >> 8]), u32(MAX_PAYLOAD), Buffer.from('fuzz-agent')));
}

function agentFrame(rng: Rng): Uint8Array {
  switch (rng.int(12)) {
    case 0: return encodeFrame(Msg.PONG, concat(rng.bytes(8), Buffer.from('v')));
    case 1: return encodeFrame(Msg.EXEC_STARTED, u32(rng.u32(), rng.chance(0.5) ? 65536 : edgeU32(rng)));
    case 2: return encodeFrame(rng.pick([Msg.STDOUT, Msg.STDERR]), rng.bytes(rng.pick([0, 1, 100, 70000])));
    case 3: return encodeFrame(Msg.STDIN_CREDIT, u32(edgeU32(rng)));
    case 4: return encodeFrame(Msg.EXIT, u32(rng.pick([1, 2, edgeU32(rng)]), edgeU32(rng), rng.int(2)));
    case 5: return encodeFrame(Msg.PUT_DONE, concat(u32(rng.u32()), u32(rng.chance(0.5) ? 0 : rng.u32())));
    case 6: return encodeFrame(Msg.GET_INFO, concat(u32(rng.u32(), 0), u32(0o644)));
    case 7: return encodeFrame(Msg.GET_DATA, rng.bytes(rng.int(5000)));
    case 8: return encodeFrame(Msg.GET_END, u32(rng.int(10000), 0));
    case 9: return encodeFrame(Msg.ERROR, concat(u32(rng.int(12), rng.u32()), Buffer.from('\x1b[31mboom\n')));
    case 10: return helloAck(rng);
    default: { // a raw header: any type, reserved, length
      const h = Buffer.alloc(8);
      h.writeUInt16LE(rng.int(0x10000), 0);
      h.writeUInt16LE(rng.chance(0.8) ? 0 : rng.int(0x10000), 2);
      h.writeUInt32LE(edgeU32(rng), 4);
      return concat(h, rng.bytes(rng.int(32)));
    }
  }
}

test('agent protocol, host side', async () => {
  const outcomes = new Map<string, number>();
  const stray: unknown[] = [];
  const onStray = (e: unknown): void => { stray.push(e); };
  process.on('unhandledRejection', onStray);
  await fuzz('agent-host', 3_000, async (rng) => {
    const [host, agent] = pair();
    agent.on('error', () => {});
    const script: Uint8Array[] = [];
    if (rng.chance(0.9)) script.push(helloAck(rng));
    for (let n = rng.int(6); n > 0; n--) script.push(rng.chance(0.7) ? agentFrame(rng) : mutate(rng, agentFrame(rng)));
    const bytes = concat(...script);
    const end = rng.int(3); // 0: FIN, 1: destroy, 2: silence
    let sent = false;
    agent.on('data', () => {
      // Answer after the first request bytes, in random pieces.
      if (sent) return;
      sent = true;
      for (let at = 0; at < bytes.length;) {
        const n = 1 + rng.int(Math.max(1, bytes.length - at));
        agent.write(bytes.subarray(at, at + n));
        at += n;
      }
      if (end === 0) agent.end();
      else if (end === 1) agent.destroy();
      // A silent agent: the caller gives up (as exec --timeout does) once everything arrived.
      else setImmediate(() => setImmediate(() => ac.abort()));
    });
    const ac = new AbortController();
    const client = new AgentClient(async () => host, { stallTimeoutMs: 50, abortGraceMs: 10 });
    const kind = rng.int(4);
    const req: Promise<unknown> =
      kind === 0 ? client.ping({ signal: ac.signal })
      : kind === 1 ? client.exec({ argv: ['x'], signal: ac.signal, stdin: rng.chance(0.3) ? Buffer.alloc(rng.int(200000)) : undefined })
      // mkdirs: a PUT flag for an agent that announced PUT_MKDIRS, else an EXEC of mkdir -p first.
      : kind === 2 ? client.put(Buffer.alloc(rng.int(200000)), '/d/x', 0o644, { signal: ac.signal, mkdirs: rng.chance(0.5) })
      : client.get('/x', { signal: ac.signal, maxBytes: 4096 });
    // An agent that hung up must end the request by itself; this only catches a hang.
    let hung = false;
    const timer = setTimeout(() => { hung = end !== 2; ac.abort(); }, 2000);
    let outcome: string;
    try {
      await req;
      outcome = 'ok';
    } catch (e) {
      if (!(e instanceof AgentError)) throw e;
      outcome = e.code;
    } finally {
      clearTimeout(timer);
      host.destroy();
      agent.destroy();
    }
    assert.not.ok(hung, `request ${kind} hung after the agent ${end === 0 ? 'ended' : 'reset'}`);
    outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
  });
  await new Promise((r) => setTimeout(r, 50));
  process.off('unhandledRejection', onStray);
  console.log(`  outcomes ${JSON.stringify(Object.fromEntries([...outcomes].sort()))}`);
  assert.equal(stray, []);
  assert.ok(outcomes.size >= 5 && (outcomes.get('PROTOCOL') ?? 0) > 0, 'the fuzzer reached many outcomes');
});

test.run();
