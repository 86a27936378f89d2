// Fuzz target: the hypercall command stream, as a hostile guest drives it. Random register
// reads and writes (any width, any offset), COMMAND writes with valid and mutated HELLO /
// REPORT / HINTS messages in shared memory (g2h_len lying or not), the guest scribbling over
// the header, the host submitting and the clock moving. Invariants: the device never throws,
// STATUS is always a defined code, RESULT is 0 on errors (except E_RATE), the host-owned header
// fields are restored after every command, and host requests always settle or stay queued.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Cmd, HC_IO_LEN, Reg, Status } from '../../../devices/hypercall/registers';
import { HYPERCALL_PORT as HC_IO_BASE } from '../../../vmm/layout';
import { ShmHeader, SHM_MAGIC, encodeHello, encodeHints, encodeReport, mailboxLayout, sourceRecord } from '../../../devices/hypercall/shmem';
import { encodeHint, HintType } from '../../../bpf/hints';
import { pkg, rig } from '../hypercall/agent';
import { edgeU32, fuzz, mutate, type Rng } from './lib';

const STATUSES = new Set<number>(Object.values(Status));

function validMessage(rng: Rng, cmd: number, requestIds: number[]): Uint8Array {
  if (cmd === Cmd.HELLO) return encodeHello({ version: 1, caps: rng.int(64), pid: rng.u32(), name: 'agent '.repeat(rng.int(4)) });
  if (cmd === Cmd.REPORT) {
    const ok = rng.chance(0.6);
    return encodeReport({ requestId: requestIds.length && rng.chance(0.8) ? rng.pick(requestIds) : rng.u32(), outcome: ok ? 'OK' : 'VERIFIER', errno: ok ? 0 : 22, progIds: ok ? [1 + rng.int(100)] : [], text: 'x'.repeat(rng.int(40)) });
  }
  const records = Array.from({ length: rng.int(12) }, () => {
    if (rng.chance(0.2)) return sourceRecord(rng.int(4));
    const h = rng.chance(0.5)
      ? encodeHint({ type: 'AFFINITY', tgid: rng.u32(), tid: rng.u32(), comm: 'fz', cpus: [rng.int(256)], mask: [] })
      : encodeHint({ type: 'UNPIN', tid: rng.u32(), tgid: rng.u32() });
    return { type: new DataView(h.buffer).getUint32(0, true), payload: h.subarray(8) };
  });
  return encodeHints({ dropped: rng.chance(0.1) ? edgeU32(rng) : 0, records });
}

test('hypercall command stream', async () => {
  const r = rig({ shm: new Uint8Array(64 * 1024), hintUnitsPerSecond: 500 });
  const { bus, dev, shm, clock } = r;
  const lay = mailboxLayout(shm.length);
  const hdr = new DataView(shm.buffer);
  const handled: number[] = [];
  dev.onHints(HintType.AFFINITY, (rec) => handled.push(rec.length));
  dev.onHints(HintType.UNPIN, (rec) => handled.push(rec.length));
  const requestIds: number[] = [];
  let settled = 0;
  let pending = 0;
  const reg = new Uint8Array(4);
  const rv = new DataView(reg.buffer);
  const io = (off: number, data: Uint8Array, write: boolean): void => {
    if (write) bus.write(HC_IO_BASE + off, data);
    else bus.read(HC_IO_BASE + off, data);
  };
  await fuzz('hypercall', 20_000, (rng) => {
    clock.t += rng.chance(0.1) ? rng.int(2000) : rng.int(3);
    const what = rng.int(20);
    if (what === 0 && pending < 64) {
      // The host queues work now and then.
      pending++;
      const p = rng.chance(0.7)
        ? dev.submit({ op: 'load', pkg: pkg(`p${rng.int(100)}`, rng.int(300)) })
        : dev.submit({ op: 'unload', handle: rng.int(8) });
      p.then(() => {}, () => {}).finally(() => { settled++; pending--; });
      return;
    }
    if (what <= 3) {
      // Register noise: any width, any offset in (and just past) the block.
      const width = rng.pick([1, 2, 4, 8]);
      const data = rng.bytes(width);
      io(rng.int(HC_IO_LEN + 4), data, rng.chance(0.5));
      return;
    }
    if (what === 4) {
      // The guest scribbles on the header.
      hdr.setUint32(4 * rng.int(16), edgeU32(rng), true);
      return;
    }
    // A command with a message in the g2h mailbox.
    const cmd = rng.chance(0.9) ? rng.pick([Cmd.HELLO, Cmd.FETCH, Cmd.FETCH, Cmd.REPORT, Cmd.REPORT, Cmd.HINTS, Cmd.HINTS].slice(rng.chance(0.1) ? 0 : 1)) : edgeU32(rng);
    const msg = rng.chance(0.5) ? validMessage(rng, cmd, requestIds) : mutate(rng, validMessage(rng, cmd, requestIds));
    shm.set(msg.subarray(0, lay.g2hSize), lay.g2hOff);
    const len = rng.chance(0.85) ? msg.length : edgeU32(rng);
    hdr.setUint32(ShmHeader.offsets.g2hLen, len, true);
    hdr.setUint32(ShmHeader.offsets.g2hSeq, rng.u32(), true);
    rv.setUint32(0, cmd, true);
    io(Reg.COMMAND, reg, true);
    io(Reg.STATUS, reg, false);
    const st = rv.getUint32(0, true);
    assert.ok(STATUSES.has(st), `status ${st}`);
    io(Reg.RESULT, reg, false);
    if (st !== Status.OK && st !== Status.E_RATE) assert.is(rv.getUint32(0, true), 0, `RESULT on status ${st}`);
    // What the agent fetched is what it reports on (a REPORT for a real in-flight request).
    if (cmd === Cmd.FETCH && st === Status.OK && rv.getUint32(0, true) > 0) requestIds.push(hdr.getUint32(lay.h2gOff + 4, true));
    if (requestIds.length > 64) requestIds.shift();
    assert.is(hdr.getUint32(ShmHeader.offsets.magic, true), SHM_MAGIC);
    assert.is(hdr.getUint32(ShmHeader.offsets.g2hSize, true), lay.g2hSize);
  });
  await new Promise((res) => setImmediate(res));
  const c = dev.counters();
  assert.ok(c.agentHellos > 0 && c.hintBatches > 0 && c.requestsCompleted > 0, JSON.stringify(c));
  assert.ok(handled.every((n) => n >= 8));
  assert.ok(dev.pending <= 64);
  console.log(`  hellos ${c.agentHellos}, hint batches ${c.hintBatches}, records ${c.hintRecords}, budget-dropped ${c.hintBudgetDropped}, requests ${c.requestsCompleted}/${c.requestsSubmitted}, settled ${settled}`);
  dev.close();
});

test.run();
