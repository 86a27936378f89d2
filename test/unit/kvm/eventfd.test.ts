// eventfds as the VMM uses them for ioeventfd/irqfd: signal, drain, and the event-loop watch
// that delivers queue notifications to the main thread.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { close, eventfd, eventfdDrain, eventfdSignal, watchReadable } from '../../../kvm/libc';

test('signal and drain count like the kernel says', () => {
  const fd = eventfd();
  assert.is(eventfdDrain(fd), 0n);
  eventfdSignal(fd);
  eventfdSignal(fd);
  assert.is(eventfdDrain(fd), 2n);
  assert.is(eventfdDrain(fd), 0n);
  close(fd);
});

test('watchReadable calls back on the event loop once per signal burst', async () => {
  const fd = eventfd();
  const seen: bigint[] = [];
  const w = watchReadable(fd, () => seen.push(eventfdDrain(fd)));
  eventfdSignal(fd);
  await new Promise((r) => setTimeout(r, 50));
  eventfdSignal(fd);
  eventfdSignal(fd);
  await new Promise((r) => setTimeout(r, 50));
  w.close();
  close(fd);
  assert.equal(seen, [1n, 2n]);
});

test.run();
