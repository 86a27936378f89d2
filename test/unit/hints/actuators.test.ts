// Actuators and the prio policy over fake threads: the operator's class and a policy's boost
// combine (the boost wins while it lasts, the base comes back), bad classes are refused with
// the field named, halt polling and pausing are logged with their reason, and the prio policy
// counts real-time tasks per vCPU (migration, exit, the --prio-max cap, mode switches, bogus
// guest input).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { checkClass } from '../../../vmm/actuators';
import { fakeHost } from './fake-host';

const FIFO = 1, OTHER = 0;

test('operator class, then a boost on top, then the boost ends: the operator class is back', () => {
  const f = fakeHost(2, { prio: 'hinted' });
  const a = f.host.actuators;
  a.setVcpuClass(1, checkClass({ policy: 'other', nice: 5 }), 'API request');
  assert.equal(f.threads.get(1001), { policy: OTHER, priority: 0, nice: 5 });
  a.boost(1, checkClass({ policy: 'fifo', priority: 3 }), 'test boost');
  assert.equal(f.threads.get(1001), { policy: FIFO, priority: 3, nice: 0 });
  const row = a.table()[1]!;
  assert.equal(row.boost?.reason, 'test boost');
  a.boost(1, undefined, 'test over');
  assert.equal(f.threads.get(1001), { policy: OTHER, priority: 0, nice: 5 });
  assert.ok(f.log.some((l) => /vcpu 1 \(tid 1001\): SCHED_FIFO 3 -> SCHED_OTHER nice 5 \(test over\)/.test(l)), f.log.join('\n'));
  assert.is(a.counters.classChanges, 3);
});

test('classes are checked field by field', () => {
  assert.throws(() => checkClass({ policy: 'fifo' }), /fifo needs a priority 1..99/);
  assert.throws(() => checkClass({ policy: 'fifo', priority: 100 }), /1..99/);
  assert.throws(() => checkClass({ policy: 'idle', nice: 3 }), /idle takes no nice/);
  assert.throws(() => checkClass({ policy: 'other', priority: 5 }), /takes no priority/);
  assert.throws(() => checkClass({ policy: 'deadline' }), /must be one of/);
  assert.equal(checkClass({ policy: 'idle' }), { policy: 'idle', priority: 0, nice: 0 });
});

test('halt polling and pausing are logged with their reason; a missing vCPU is refused', async () => {
  const f = fakeHost(2);
  const a = f.host.actuators;
  assert.is(a.haltPoll, 200000);
  assert.is(a.haltPollSource, 'module');
  a.setHaltPoll(0, 'experiment');
  assert.is(f.haltPoll.ns, 0);
  assert.is(a.haltPollSource, 'tsvmm');
  await a.pause(1, 'experiment');
  assert.is(f.paused[1], true);
  assert.is(a.table()[1]!.paused, true);
  await a.resume(1, 'done');
  assert.is(f.paused[1], false);
  assert.ok(f.log.includes('actuator: halt polling 200000 ns -> 0 ns (experiment)'));
  assert.ok(f.log.includes('actuator: vcpu 1 paused (experiment)') && f.log.includes('actuator: vcpu 1 resumed (done)'));
  await assert.not.throws(() => a.table());
  try {
    await a.pause(5, 'x');
    assert.unreachable();
  } catch (e) {
    assert.match((e as Error).message, /no vCPU 5/);
  }
});

test('prio: a vCPU is boosted while it has a real-time task and restored when the last leaves', () => {
  const f = fakeHost(3, { prio: 'hinted', prioMax: 20 });
  const p = f.host.prio;
  const cls = (v: number) => f.threads.get(f.tids[v]!)!;
  p.onHint({ tid: 10, cpu: 1, rtprio: 5, event: 'SET' });
  p.onHint({ tid: 11, cpu: 1, rtprio: 50, event: 'FORK' });
  assert.equal(cls(1), { policy: FIFO, priority: 20, nice: 0 }, 'highest guest priority, capped');
  p.onHint({ tid: 11, cpu: 2, rtprio: 50, event: 'MIGRATE' });
  assert.equal(cls(1), { policy: FIFO, priority: 5, nice: 0 });
  assert.equal(cls(2), { policy: FIFO, priority: 20, nice: 0 });
  p.onHint({ tid: 10, cpu: 1, rtprio: 0, event: 'EXIT' });
  assert.equal(cls(1), { policy: OTHER, priority: 0, nice: 0 }, 'released when no such task remains');
  p.setMode('none', 'test');
  assert.equal(cls(2), { policy: OTHER, priority: 0, nice: 0 }, 'mode none restores');
  p.setMode('hinted', 'test');
  assert.equal(cls(2), { policy: FIFO, priority: 20, nice: 0 }, 'tracked under every mode');
  // Guest nonsense changes nothing.
  for (const h of [{ tid: -1, cpu: 0, rtprio: 5 }, { tid: 12, cpu: 0, rtprio: 100 }, { tid: 12, cpu: 7, rtprio: 5 }, { tid: 1.5, cpu: 0, rtprio: 5 }]) p.onHint({ ...h, event: 'SET' });
  assert.equal(cls(0), { policy: OTHER, priority: 0, nice: 0 });
  assert.is(p.counters.rejectedInvalid, 4);
  assert.equal(p.table().map((v) => v.boost), [0, 0, 20]);
});

test('prio: a flood is rate limited, releases are not', () => {
  let now = 0;
  const f = fakeHost(2, { prio: 'hinted', now: () => now });
  const p = f.host.prio;
  for (let i = 1; i <= 1000; i++) p.onHint({ tid: i, cpu: i % 2, rtprio: 1 + (i % 90), event: 'SET' });
  assert.ok(p.counters.rateLimited > 0);
  const tracked = p.table().reduce((n, v) => n + v.tasks.length, 0);
  assert.ok(tracked <= 400, `${tracked} tracked`);
  for (let i = 1; i <= 1000; i++) p.onHint({ tid: i, cpu: 0, rtprio: 0, event: 'EXIT' });
  assert.equal(p.table().map((v) => v.tasks.length), [0, 0]);
  assert.equal(f.threads.get(f.tids[0]!), { policy: OTHER, priority: 0, nice: 0 });
  now += 10_000;
});

test.run();
