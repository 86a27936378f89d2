// A drive's I/O thread (vhost-style): sleeps on the queue's ioeventfd, and on each wake-up
// serves the ring itself — pop, parse, start the host I/O, used ring, irqfd — over its own view
// of guest RAM, so a request costs one thread wake-up and no main-thread work. The host I/O goes
// through io_uring (backend.ts: several requests in flight), whose completions signal the same
// eventfd: a wake-up is a kick, a completion or a command, and each runs one serving pass.
// The main thread (thread.ts) keeps the control plane and tells this thread what to do through
// a MessagePort this thread reads synchronously after every wake-up: `run` a queue, `stop`
// (acknowledged through shared memory, so a reset can wait for it), `exit`.

import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import { GuestMemory } from '../../memory';
import { eventfdSignal, eventfdWait, installSeccompFilter, setThreadName, view } from '../../../kvm/libc';
import { seccompMode } from '../../../bpf/seccomp-worker';
import { SysError } from '../../../kvm/errors';
import { INT_USED_BUFFER, raiseInterrupt } from '../mmio';
import { Queue, QueueError } from '../queue';
import { FileIo, SyncIo, UringIo, type BlockIo } from './backend';
import { blockThreadFilter } from './seccomp';
import { BlockRequestServer, count } from './serve';
import { CTL, THREAD_DEAD, type ThreadCommand, type ThreadInit, type ThreadReport } from './thread';

/** The longest the thread sleeps without looking up (ms). */
const WAKE_MS = 1000;

const init = workerData as ThreadInit;
const report = (m: ThreadReport) => parentPort!.postMessage(m);
const { ctl, counters } = init;

/** Tells main that `gen`'s stop (or the thread's end) happened: a waiting reset goes on. */
function acknowledge(gen: number): void {
  Atomics.store(ctl, CTL.ACK, gen);
  Atomics.notify(ctl, CTL.ACK);
}

function main(): void {
  setThreadName(`tsvmm-blk-${init.id}`);
  const regions = init.ram.map((r) => ({ gpa: r.gpa, bytes: new Uint8Array(view(r.addr, r.size)), addr: r.addr }));
  const mem = new GuestMemory(regions);
  const io = openIo(regions);
  // Setup is over: from here the thread only serves its image (seccomp.ts).
  const seccomp = seccompMode();
  if (seccomp !== 'off') installSeccompFilter(blockThreadFilter(init.fd, io instanceof UringIo ? io.ringFd : undefined, seccomp));
  let active: { gen: number; server: BlockRequestServer } | undefined;
  /** Stops serving: every transfer in flight finishes first (answered, unless the ring is broken). */
  const drop = (answer: boolean) => {
    active?.server.drain(answer);
    active = undefined;
  };
  const stopAsked = () => Atomics.load(ctl, CTL.GEN) !== active!.gen;
  report({ type: 'ready' });
  for (;;) {
    // A wake-up at least every WAKE_MS returns to JavaScript, where a terminate() takes effect.
    if (eventfdWait(init.kickFd, WAKE_MS) === 0n) continue;
    count(counters, 'wakeups');
    for (let m = receiveMessageOnPort(init.port); m; m = receiveMessageOnPort(init.port)) {
      const cmd = m.message as ThreadCommand;
      if (cmd.type === 'run') {
        const s = cmd.queue;
        const q = new Queue(mem, s.maxSize);
        q.size = s.size;
        q.descAddr = s.descAddr;
        q.availAddr = s.availAddr;
        q.usedAddr = s.usedAddr;
        q.eventIdx = s.eventIdx;
        q.indirect = s.indirect;
        q.ready = true;
        const { isr, irqFd } = cmd;
        const server = new BlockRequestServer(q, {
          geometry: init.geometry, idBytes: init.idBytes, io, counters,
          interrupt: () => count(counters, raiseInterrupt(isr, INT_USED_BUFFER, () => eventfdSignal(irqFd)) ? 'interrupts' : 'interruptsCoalesced'),
          log: (message) => report({ type: 'log', message }),
        });
        drop(true);
        active = { gen: cmd.gen, server };
      } else {
        drop(true);
        acknowledge(cmd.gen);
        if (cmd.type === 'exit') {
          io.close();
          return;
        }
      }
    }
    if (!active) continue;
    try {
      active.server.serve(stopAsked);
    } catch (e) {
      if (!(e instanceof QueueError)) throw e;
      // The driver broke its ring: main puts the device into NEEDS_RESET; nothing more is
      // served until a reset and a new DRIVER_OK send `run` again.
      count(counters, 'queueErrors');
      report({ type: 'needs-reset', gen: active.gen, reason: e.message });
      drop(false);
    }
  }
}

/**
 * io_uring over the image (backend.ts), or — where it cannot be set up, or TSVMM_BLK_IO=sync asks
 * (to compare) — synchronous I/O, one request at a time; said once in the log.
 */
function openIo(regions: { bytes: Uint8Array; addr: bigint }[]): BlockIo {
  const file = new FileIo(init.fd, init.size, init.path);
  if (process.env.TSVMM_BLK_IO === 'sync') {
    report({ type: 'log', message: 'TSVMM_BLK_IO=sync: one request at a time, synchronous I/O' });
    return new SyncIo(file, init.queueSize);
  }
  // A request's buffers are views of these regions: their host address is the region's plus the offset.
  const base = new Map(regions.map((r) => [r.bytes.buffer, r.addr]));
  const addressOf = (b: Uint8Array) => {
    const at = base.get(b.buffer as ArrayBuffer);
    if (at === undefined) throw new Error('virtio-blk: a buffer outside guest RAM');
    return at + BigInt(b.byteOffset);
  };
  try {
    return new UringIo(file, init.fd, init.queueSize, init.geometry.segMax, init.kickFd, addressOf);
  } catch (e) {
    if (!(e instanceof SysError)) throw e;
    report({ type: 'log', message: `io_uring unavailable (${e.message}): one request at a time, synchronous I/O` });
    return new SyncIo(file, init.queueSize);
  }
}

try {
  main();
} catch (e) {
  // A bug, not the guest: say so, and never leave a reset waiting for an ack that cannot come.
  report({ type: 'failed', message: e instanceof Error ? (e.stack ?? e.message) : String(e) });
  acknowledge(THREAD_DEAD);
  throw e;
}
