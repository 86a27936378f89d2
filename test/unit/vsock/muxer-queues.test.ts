// The muxer's two queues: who speaks next (muxer-rxq.ts) and when connections time out
// (muxer-killq.ts).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { MuxerRxQueue } from '../../../devices/virtio/vsock/muxer-rxq';
import { MuxerKillQueue } from '../../../devices/virtio/vsock/muxer-killq';

test('rxq: RSTs first and bounded, then ready connections round robin', () => {
  const q = new MuxerRxQueue<string>(2);
  assert.is(q.pending, false);
  q.set('a', true);
  q.set('b', true);
  q.set('a', true); // already waiting: keeps its place
  assert.ok(q.pushRst({ localPort: 1, peerPort: 2 }));
  assert.ok(q.pushRst({ localPort: 3, peerPort: 4 }));
  assert.not.ok(q.pushRst({ localPort: 5, peerPort: 6 }), 'a third RST does not fit');
  assert.equal(q.popRst(), { localPort: 1, peerPort: 2 });
  assert.equal(q.popRst(), { localPort: 3, peerPort: 4 });
  assert.is(q.popRst(), undefined);
  assert.equal([...q.turns()], ['a', 'b']);
  q.sent('a', true); // more to say: to the back
  assert.equal([...q.turns()], ['b', 'a']);
  q.sent('b', false);
  q.set('a', false);
  assert.is(q.pending, false);
  q.sent('c', true); // never queued: stays out
  assert.equal([...q.turns()], []);
  q.set('bulk', true);
  q.sent('bulk', true); // alone with more to say: keeps its (only) place
  assert.equal([...q.turns()], ['bulk']);
  q.sent('bulk', false);
  assert.is(q.pending, false);
});

test('killq: one timer for the earliest deadline; expired ones handed back in one sweep, rescheduled ones not', async () => {
  // The queue's clock is the test's, so which deadlines have passed never depends on how late a
  // loaded machine runs the timers; real time only has to pass for them to fire at all (a timer
  // awaited here is due after the queue's, so it runs after it).
  let now = 0;
  const after = async (fakeMs: number, realMs: number) => {
    now += fakeMs;
    await new Promise((r) => setTimeout(r, realMs));
  };
  const expired: string[] = [];
  const q = new MuxerKillQueue<string>((c) => expired.push(c), () => now);
  q.schedule('late', 200);
  q.schedule('a', 20);
  q.schedule('b', 20);
  q.schedule('moved', 20);
  q.schedule('moved', 150); // its deadline moved out
  q.schedule('gone', 20);
  q.schedule('gone', undefined); // and this one's was cleared
  assert.is(q.size, 4);
  await after(100, 60); // the timer armed for 20 (21 ms) fires at 100: a and b, in one sweep
  assert.equal(expired.sort(), ['a', 'b']);
  await after(60, 80); // re-armed for 150 (51 ms): fires at 160
  assert.equal(expired, ['a', 'b', 'moved']);
  await after(140, 80); // re-armed for 200 (41 ms): fires at 300
  assert.equal(expired, ['a', 'b', 'moved', 'late']);
  assert.is(q.size, 0);
  q.schedule('x', now + 10);
  q.clear();
  await after(100, 40);
  assert.is(expired.length, 4, 'cleared: nothing fires');
});

test('killq: an earlier timer is kept while deadlines come and go; none is left once no deadline is', () => {
  // The queue's timers, seen through the globals it calls (an unref'd timer is invisible to
  // process.getActiveResourcesInfo).
  const live = new Set<unknown>();
  let created = 0;
  const realSet = globalThis.setTimeout;
  const realClear = globalThis.clearTimeout;
  globalThis.setTimeout = ((fn: () => void, ms?: number) => {
    created++;
    const t = realSet(() => { live.delete(t); fn(); }, ms);
    live.add(t);
    return t;
  }) as typeof setTimeout;
  globalThis.clearTimeout = ((t?: NodeJS.Timeout) => {
    live.delete(t);
    realClear(t);
  }) as typeof clearTimeout;
  try {
    const now = 0;
    const q = new MuxerKillQueue<string>(() => {}, () => now);
    q.schedule('a', 50);
    q.schedule('b', 1000);
    q.schedule('a', undefined); // a's credit request answered: b's later deadline rides on a's timer
    q.schedule('a', 60);
    assert.is(created, 1);
    assert.is(live.size, 1);
    q.schedule('b', undefined);
    q.schedule('a', undefined); // the connections' deadlines are gone: so is the timer
    assert.is(live.size, 0);
    q.schedule('c', 2000);
    assert.is(live.size, 1);
    q.clear(); // device reset
    assert.is(live.size, 0);
  } finally {
    globalThis.setTimeout = realSet;
    globalThis.clearTimeout = realClear;
  }
});

test.run();
