// Fuzz target: vsock packets from a hostile guest driver, through the real device and muxer
// (real Unix sockets: a host listener at PATH_P that echoes, host clients that CONNECT). Packets
// are random but aimed: ports mostly from live connections, every op with random flags,
// credit fields at edge values, `len` lying about the payload. Invariants: nothing throws, the
// device never enters NEEDS_RESET from packet contents, both buffer budgets and the connection
// limit hold after every step.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VirtioVsock } from '../../../devices/virtio/vsock/device';
import { OP_REQUEST } from '../../../devices/virtio/vsock/packet';
import { SimGuest } from '../vsock/sim';
import { edgeU32, fuzz } from './lib';

const CID = 9;
const RX_LIMIT = 512 * 1024;
const TX_LIMIT = 512 * 1024;
const MAX_CONNS = 32;

test('vsock packets', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-fuzz-vsock-'));
  const uds = join(dir, 'v.sock');
  const dev = await VirtioVsock.create({
    guestCid: CID, udsPath: uds, maxConnections: MAX_CONNS, totalRxBufferLimit: RX_LIMIT, totalTxBufferLimit: TX_LIMIT,
    connLimits: { connectTimeoutMs: 50, shutdownTimeoutMs: 50 },
  });
  const g = new SimGuest(dev, { cid: CID });
  g.start();
  const servers = [7000, 7001].map((p) => {
    const srv = net.createServer((s) => { s.on('error', () => {}); s.pipe(s); });
    srv.listen(`${uds}_${p}`);
    return srv;
  });
  const clients: net.Socket[] = [];
  const pairs: { local: number; peer: number }[] = [];
  await fuzz('vsock', 5_000, async (rng, i) => {
    // Host clients come and go (their CONNECTs make the device send REQUESTs the fuzzer may answer).
    if (rng.chance(0.01) && clients.length < 8) {
      const s = net.connect(uds);
      s.on('error', () => {});
      s.on('data', () => {});
      s.write(`CONNECT ${rng.pick([80, 81, edgeU32(rng)])}\n${rng.chance(0.5) ? 'early data' : ''}`);
      clients.push(s);
    }
    if (rng.chance(0.005) && clients.length) clients.splice(rng.int(clients.length), 1)[0]!.destroy();
    for (const h of g.rxLog) if (h.op === OP_REQUEST) pairs.push({ local: h.srcPort, peer: h.dstPort });
    g.rxLog.length = 0;
    if (pairs.length > 64) pairs.splice(0, pairs.length - 64);
    const known = pairs.length && rng.chance(0.5) ? rng.pick(pairs) : undefined;
    const guestPort = known ? known.peer : rng.pick([50_000, 50_001, 80, edgeU32(rng)]);
    const hostPort = known ? known.local : rng.pick([7000, 7001, 7002, edgeU32(rng)]);
    const payload = rng.chance(0.3) ? rng.bytes(rng.pick([1, 100, 4096, 65536])) : new Uint8Array(0);
    g.sendRaw({
      srcPort: guestPort, dstPort: hostPort,
      op: rng.chance(0.95) ? 1 + rng.int(7) : rng.int(0x10000),
      type: rng.chance(0.97) ? 1 : rng.int(0x10000),
      flags: rng.chance(0.8) ? rng.int(4) : edgeU32(rng),
      len: rng.chance(0.9) ? payload.length : edgeU32(rng),
      bufAlloc: rng.chance(0.7) ? 256 * 1024 : edgeU32(rng),
      fwdCnt: rng.chance(0.5) ? 0 : edgeU32(rng),
      srcCid: rng.chance(0.98) ? BigInt(CID) : BigInt(edgeU32(rng)),
      dstCid: rng.chance(0.98) ? 2n : BigInt(edgeU32(rng)),
    }, payload, rng.chance(0.3));
    if (i % 32 === 0) await new Promise((r) => setImmediate(r));
    assert.is(g.needsResetReason, undefined, 'packets never break the device');
    assert.ok(dev.muxer.connectionCount <= MAX_CONNS + 8, `${dev.muxer.connectionCount} connections`);
    assert.ok(dev.muxer.rxBufferedBytes <= RX_LIMIT + 64 * 1024, `rx ${dev.muxer.rxBufferedBytes}`);
    assert.ok(dev.muxer.txBufferedBytes <= TX_LIMIT + 64 * 1024, `tx ${dev.muxer.txBufferedBytes}`);
  });
  const c = dev.counters;
  console.log(`  opened ${c.connectionsOpened}, refused ${c.connectionsRefused}, from guest ${c.bytesFromGuest} B, dropped ${c.packetsDropped}`);
  assert.ok(c.connectionsOpened > 0 && c.packetsDropped > 0);
  for (const s of clients) s.destroy();
  for (const srv of servers) srv.close();
  await dev.close();
  rmSync(dir, { recursive: true, force: true });
});

test.run();
