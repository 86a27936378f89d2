// epoll, eventfd and timerfd as the mailbox server uses them within a burst of forwarded
// accesses (vmm/vcpu/serve.ts): edge-triggered, so each doorbell ring is reported without a read
// of the eventfd, and a periodic timerfd that ticks on as long as its expiries are read.
// epollWait has no timeout: each wait here follows an event that must end it.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { close, epollAdd, epollCreate, epollWait, eventfd, eventfdDrain, eventfdSignal, timerfdCreate, timerfdExpirations, timerfdPeriodic } from '../../../kvm/libc';

test('an eventfd is reported once per signal, never read meanwhile, with the token it was added with', () => {
  const ep = epollCreate();
  const fd = eventfd();
  epollAdd(ep, fd, 4);
  eventfdSignal(fd);
  assert.is(epollWait(ep), 4);
  eventfdSignal(fd);
  assert.is(epollWait(ep), 4, 'a second signal is a new edge although the counter was not read');
  assert.is(eventfdDrain(fd), 2n, 'the counter kept both');
  close(fd);
  close(ep);
});

test('a periodic timerfd ticks while its expiries are read; disarmed, it has none', async () => {
  const ep = epollCreate();
  const bell = eventfd();
  const timer = timerfdCreate();
  epollAdd(ep, bell, 1);
  epollAdd(ep, timer, 2);
  const t0 = performance.now();
  timerfdPeriodic(timer, 5);
  for (let tick = 0; tick < 3; tick++) {
    assert.is(epollWait(ep), 2);
    assert.ok(timerfdExpirations(timer) >= 1);
  }
  const ms = performance.now() - t0;
  assert.ok(ms >= 14, `three 5 ms periods took ${ms.toFixed(1)} ms`);
  timerfdPeriodic(timer, 0);
  await new Promise((r) => setTimeout(r, 20));
  assert.is(timerfdExpirations(timer), 0, 'disarmed: no expiry in 20 ms');
  eventfdSignal(bell);
  assert.is(epollWait(ep), 1, 'only the bell is reported');
  close(timer);
  close(bell);
  close(ep);
});

test.run();
