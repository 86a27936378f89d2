// Many VMs in one process share one listener per process event (lib/process-hooks.ts): twenty
// holders add one listener, not twenty (Node warns past ten), every callback still runs at exit,
// and the listener goes when the last holder lets go.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { atExit, holdSignal } from '../../../lib/process-hooks';

test('twenty exit hooks: one process listener, each hook run once, none left after removal', () => {
  const before = process.listeners('exit');
  const ran: number[] = [];
  const removers = Array.from({ length: 20 }, (_, i) => atExit(() => ran.push(i)));
  const added = process.listeners('exit').filter((l) => !before.includes(l));
  assert.is(added.length, 1);
  // A hook that throws does not keep the others from running.
  const removeThrowing = atExit(() => {
    throw new Error('gone');
  });
  (added[0] as () => void)();
  assert.equal(ran, Array.from({ length: 20 }, (_, i) => i));
  removeThrowing();
  removers.slice(0, 10).forEach((r) => r());
  ran.length = 0;
  (added[0] as () => void)();
  assert.equal(ran, Array.from({ length: 10 }, (_, i) => i + 10));
  removers.forEach((r) => r()); // removing twice is harmless
  assert.equal(process.listeners('exit'), before);
});

test('a signal held by twenty machines has one handler, kept until the last release', () => {
  const sig = 'SIGUSR2';
  const base = process.listenerCount(sig);
  const releases = Array.from({ length: 20 }, () => holdSignal(sig));
  assert.is(process.listenerCount(sig), base + 1);
  releases[0]!();
  releases[0]!(); // idempotent: the second call must not release another holder's hold
  releases.slice(1, 19).forEach((r) => r());
  assert.is(process.listenerCount(sig), base + 1, 'one holder left');
  releases[19]!();
  assert.is(process.listenerCount(sig), base);
});

test.run();
