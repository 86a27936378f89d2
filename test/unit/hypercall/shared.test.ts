// STATUS, RESULT and SEQ are shared registers: a vCPU thread answers the agent's reads after a
// command from shared cells (and the probe's reads of the fixed registers, MAGIC..SHM_SIZE) (vmm/vcpu/shared.ts, the very code the worker runs), so a hostile
// agent's command loop costs the main thread one forwarded exit per command, not two. The
// cells must give exactly what the device's read() gives, after every kind of command.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Cmd, Reg, Status } from '../../../devices/hypercall/registers';
import { serveShared } from '../../../vmm/vcpu/shared';
import { HYPERCALL_PORT as HC_IO_BASE } from '../../../vmm/layout';
import { SimAgent, rig } from './agent';

test('STATUS, RESULT and SEQ from the shared cells equal the device registers after every command', () => {
  const r = rig({ ratePerSecond: 4, burst: 4, hintRecordsPerTurn: Infinity });
  const a = new SimAgent(r.bus, r.shm);
  const claim = { base: HC_IO_BASE, len: 0x40, shared: r.dev.sharedRegisters() };
  const constant = [Reg.MAGIC, Reg.VERSION, Reg.FEATURES, Reg.DOORBELL_PORT, Reg.SHM_BASE_LO, Reg.SHM_BASE_HI, Reg.SHM_SIZE];
  assert.equal(claim.shared.map((s) => [s.offset, s.kind]), [
    ...constant.map((reg) => [reg, 'load']),
    [Reg.STATUS, 'load'], [Reg.RESULT, 'load'], [Reg.SEQ, 'load'], [Reg.COMMAND, 'refuse'],
  ]);
  assert.not.ok(serveShared(claim, HC_IO_BASE + Reg.PENDING, new Uint8Array(4), false), 'PENDING changes with the queue: it reaches the device');
  const check = (what: string) => {
    for (const reg of [...constant, Reg.STATUS, Reg.RESULT, Reg.SEQ]) {
      const fromCell = new Uint8Array(4);
      assert.ok(serveShared(claim, HC_IO_BASE + reg, fromCell, false), `register 0x${reg.toString(16)} is served from its cell`);
      const fromDevice = new Uint8Array(4);
      r.dev.read(reg, fromDevice);
      assert.equal([...fromCell], [...fromDevice], `${what}: register 0x${reg.toString(16)}`);
    }
  };
  check('before any command');
  a.call(Cmd.FETCH); // before HELLO
  assert.is(a.inl(Reg.STATUS), Status.E_STATE);
  check('E_STATE');
  a.hello();
  check('HELLO');
  a.hints({ dropped: 0, records: [{ type: 1, payload: new Uint8Array(8) }, { type: 1, payload: new Uint8Array(8) }] });
  assert.is(a.inl(Reg.RESULT), 2);
  check('HINTS OK, RESULT 2');
  a.outl(Reg.STATUS, 1); // a write that is not COMMAND
  check('E_ACCESS');
  a.call(0xdead);
  check('unknown command');
  a.call(Cmd.FETCH); // the fifth command: the rate limit of 4 is spent
  assert.is(a.inl(Reg.STATUS), Status.E_RATE);
  assert.ok(a.inl(Reg.RESULT) > 0);
  check('E_RATE with a retry time');
  // Writes to the load registers are not served from the cells (they reach the device); nor
  // is a COMMAND write while the device refuses nothing.
  assert.not.ok(serveShared(claim, HC_IO_BASE + Reg.STATUS, new Uint8Array(4), true));
  assert.not.ok(serveShared(claim, HC_IO_BASE + Reg.COMMAND, u32(Cmd.HINTS), true));
  // Only 4-byte reads at the exact offset qualify.
  assert.not.ok(serveShared(claim, HC_IO_BASE + Reg.STATUS, new Uint8Array(2), false));
});

const u32 = (v: number) => new Uint8Array(new Uint32Array([v]).buffer);

test('with the hint budget spent the vCPU thread refuses HINTS itself (E_RATE, SEQ + 1, counted), until the budget has refilled by HINT_REOPEN_UNITS', async () => {
  // 100 units a second on a clock of the test's own: no unit comes back between two calls
  // however slow the machine is (the real clock made this test flaky under load).
  let clock = 0;
  const r = rig({ hintUnitsPerSecond: 100, hintUnitBurst: 4, hintRecordsPerTurn: Infinity, now: () => clock });
  const a = new SimAgent(r.bus, r.shm);
  a.hello();
  const claim = { base: HC_IO_BASE, len: 0x40, shared: r.dev.sharedRegisters() };
  const vcpuWrite = (cmd: number) => serveShared(claim, HC_IO_BASE + Reg.COMMAND, u32(cmd), true);
  const vcpuRead = (reg: number) => {
    const b = new Uint8Array(4);
    assert.ok(serveShared(claim, HC_IO_BASE + reg, b, false));
    return new DataView(b.buffer).getUint32(0, true);
  };
  const batch = { dropped: 0, records: Array.from({ length: 10 }, () => ({ type: 1, payload: new Uint8Array(8) })) };
  assert.not.ok(vcpuWrite(Cmd.HINTS), 'budget left: HINTS goes to the device');
  assert.equal(a.hints(batch), { status: Status.OK, result: 4 }, 'the burst of 4 taken');
  assert.is(a.hints(batch).status, Status.E_RATE, 'the device refuses: budget spent');
  const before = r.dev.counters();
  const seq = vcpuRead(Reg.SEQ);
  for (let i = 0; i < 100; i++) assert.ok(vcpuWrite(Cmd.HINTS), 'refused in the vCPU thread');
  assert.is(vcpuRead(Reg.STATUS), Status.E_RATE);
  assert.ok(vcpuRead(Reg.RESULT) >= 1, 'RESULT: ms until a retry can succeed');
  assert.is(vcpuRead(Reg.SEQ), (seq + 100) >>> 0);
  assert.not.ok(vcpuWrite(Cmd.FETCH), 'other commands still reach the device');
  const after = r.dev.counters();
  assert.is(after.calls.HINTS - before.calls.HINTS, 100, 'counted as HINTS calls');
  assert.is(after.errors.E_RATE - before.errors.E_RATE, 100, 'refused with E_RATE');
  assert.is(after.g2hBytes, before.g2hBytes, 'nothing read');
  // The device re-opens HINTS once the burst of 4 is back (40 ms at 100/s; 8 units with the default
  // burst): its timer is real, the budget reads the test's clock.
  clock += 150;
  await new Promise((res) => setTimeout(res, 150));
  assert.not.ok(vcpuWrite(Cmd.HINTS), 'budget back: HINTS reaches the device again');
  assert.equal(a.hints(batch), { status: Status.OK, result: 4 });
  r.dev.close();
  assert.not.ok(vcpuWrite(Cmd.HINTS), 'a closed device refuses nothing in the vCPU threads');
});

test.run();
