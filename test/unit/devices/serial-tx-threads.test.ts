// The UART's transmit handshake across threads, as a guest drives it: a worker thread plays
// Linux's 8250 driver on a vCPU (serveShared for what the vCPU thread serves, the real mailbox
// to main for the rest, as vmm/vcpu/worker.ts does), main runs the device, its transmit ring's
// drain and the mailbox server (vmm/vcpu/serve.ts). The driver sends 16 bytes per THRE
// interrupt, enables THRE (start_tx) and turns it off when it runs dry (stop_tx), and its
// console clears IER around a line of its own, all while main drains the ring and raises THRE
// for what it drained. A THRE interrupt lost on the way (a state the two threads both changed,
// an enable that raises nothing) leaves the driver with bytes to send and nothing to wake it:
// in a guest the tty layer stalls for good, here the driver's wait for the interrupt times out
// (twice, with main done draining: a loaded machine only delays main).
import { fileURLToPath } from 'node:url';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Bus, type BusClaim } from '../../../devices/bus';
import { Serial16550 } from '../../../devices/serial';
import {
  type Doorbell, KIND_PIO, MB, STATE_IDLE, closeDoorbell, mailboxData, newDoorbell, newMailbox, postRequest, waitForAnswer,
} from '../../../vmm/vcpu/mailbox';
import { MailboxServer } from '../../../vmm/vcpu/serve';
import { serveShared } from '../../../vmm/vcpu/shared';
import { close, eventfd, eventfdDrain, eventfdSignal, eventfdWait } from '../../../kvm/libc';

const COM1 = 0x3f8;
const THR = 0;
const IER = 1;
const IIR = 2;
const LSR = 5;
const IER_RDA = 0x01;
const IER_THRI = 0x02;
const IER_RLS = 0x04;
const LSR_THRE = 0x20;
/** The 8250's tx_loadsz with FIFOs: bytes written per THRE interrupt. */
const TX_LOADSZ = 16;
/**
 * How long the driver waits for an interrupt while it has bytes to send, twice in a row with
 * the ring drained, before it calls it lost: a loaded machine may leave main unscheduled for a
 * while, but not with nothing left to do but raise the interrupt, for that long twice.
 */
const LOST_MS = 3000;
/** The ring's HEAD and TAIL cells (devices/tx-ring.ts RING): equal once main has drained it. */
const RING_HEAD = 0;
const RING_TAIL = 1;

interface GuestData {
  claim: BusClaim;
  mailbox: Int32Array;
  doorbell: Doorbell;
  /** Index 0: THRE/RDA interrupts raised by the device (main increments it, the guest waits on it). */
  irq: Int32Array;
  /**
   * The line as an eventfd (a KVM irqfd's): then the guest waits on it instead, and the vCPU
   * thread raises THRE itself for the bytes it pushes (SharedRegister.thre).
   */
  irqFd?: number;
  ms: number;
  seed: number;
}

interface GuestResult {
  /** Every byte the guest wrote to THR, in its order. */
  sent: Uint8Array;
  forwarded: number;
  served: number;
  interrupts: number;
  /** With an eventfd line: every write to it the guest saw (main's and the vCPU thread's). */
  lineRaises?: number;
  /** Set when the driver had bytes to send and no interrupt came for LOST_MS. */
  stalled?: string;
}

function guestSide(): void {
  const { claim, mailbox: mb, doorbell, irq, irqFd, ms, seed } = workerData as GuestData;
  // The interrupt line: a count main bumps, or an eventfd either thread writes.
  let fdCount = 0;
  const raised = (): number => (irqFd === undefined ? Atomics.load(irq, 0) : (fdCount += Number(eventfdDrain(irqFd))));
  const waitRaised = (seen: number, ms: number): void => {
    if (irqFd === undefined) Atomics.wait(irq, 0, seen, ms);
    else fdCount += Number(eventfdWait(irqFd, ms));
  };
  const ring = claim.shared.find((r) => r.kind === 'push')!.cell;
  const drained = (): boolean => Atomics.load(ring, RING_HEAD) === Atomics.load(ring, RING_TAIL);
  const mbData = mailboxData(mb);
  let forwarded = 0;
  let served = 0;
  const access = (reg: number, data: Uint8Array, isWrite: boolean): void => {
    if (serveShared(claim, COM1 + reg, data, isWrite)) {
      served++;
      return;
    }
    forwarded++;
    postRequest(mb, doorbell, KIND_PIO, COM1 + reg, data, isWrite);
    if (!waitForAnswer(mb)) throw new Error('the mailbox answered nothing');
    if (!isWrite) data.set(mbData.subarray(0, data.length));
    Atomics.store(mb, MB.STATE, STATE_IDLE);
  };
  const inb = (reg: number): number => {
    const d = new Uint8Array(1);
    access(reg, d, false);
    return d[0]!;
  };
  const outb = (reg: number, v: number): void => access(reg, Uint8Array.of(v), true);

  // A small deterministic generator: the test's schedule is the same every run.
  let x = seed >>> 0 || 1;
  const rand = (n: number): number => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) % n;
  };

  const sent: number[] = [];
  const circ: number[] = []; // the tty layer's transmit buffer
  let head = 0;
  let ier = IER_RDA | IER_RLS; // the driver's copy (up->ier); it never reads IER for itself
  let next = 0;
  let interrupts = 0;
  let seen = 0;

  const thr = (b: number): void => {
    outb(THR, b);
    sent.push(b);
  };
  // serial8250_start_tx: THRE enabled if it is not (the device raises THRE at once).
  const startTx = (): void => {
    if (ier & IER_THRI) return;
    ier |= IER_THRI;
    outb(IER, ier);
  };
  // serial8250_tx_chars: up to tx_loadsz bytes; stop_tx (THRE off) once the buffer is empty.
  const txChars = (): void => {
    for (let n = TX_LOADSZ; n > 0 && head < circ.length; n--) thr(circ[head++]!);
    if (head === circ.length) {
      ier &= ~IER_THRI;
      outb(IER, ier);
    }
  };
  // serial8250_handle_irq, looped until IIR reads "none" (serial8250_interrupt).
  const isr = (): void => {
    interrupts++;
    for (let pass = 0; pass < 256; pass++) {
      if (inb(IIR) & 0x01) return;
      if (inb(LSR) & LSR_THRE && ier & IER_THRI) txChars();
    }
  };
  // serial8250_console_write: IER saved and cleared, the line polled out, IER restored.
  const consoleWrite = (len: number): void => {
    const saved = inb(IER);
    outb(IER, 0);
    for (let i = 0; i < len; i++) {
      while (!(inb(LSR) & LSR_THRE));
      thr(i === len - 1 ? 0x0a : 0x21 + (i % 90));
    }
    outb(IER, saved);
  };

  let stalled: string | undefined;
  const until = Date.now() + ms;
  let quiet = 0; // timed-out waits in a row with the ring drained
  while (Date.now() < until && !stalled) {
    // A tty write of up to a page, now and then with a console line in the middle of it.
    const len = 1 + rand(1024);
    for (let i = 0; i < len; i++) circ.push(0x30 + (next++ % 64));
    startTx();
    if (rand(4) === 0) consoleWrite(1 + rand(80));
    while (head < circ.length) {
      const now = raised();
      if (now !== seen) {
        seen = now;
        quiet = 0;
        isr();
        continue;
      }
      waitRaised(seen, LOST_MS);
      if (raised() !== seen) continue;
      quiet = drained() ? quiet + 1 : 0;
      if (quiet >= 2) {
        stalled = `no interrupt for ${2 * LOST_MS} ms with the ring drained and ${circ.length - head} bytes to send (IER ${ier.toString(16)}, IIR ${inb(IIR).toString(16)})`;
        break;
      }
    }
  }
  raised();
  parentPort!.postMessage({ sent: Uint8Array.from(sent), forwarded, served, interrupts, lineRaises: irqFd === undefined ? undefined : fdCount, stalled } satisfies GuestResult);
}

if (!isMainThread) {
  guestSide();
} else {
  /**
   * One run of the guest against the device. `withFd`: the line is an eventfd, as a KVM irqfd
   * (vmm/irq.ts IrqfdLine): the vCPU thread raises THRE for what it pushes, main only for what
   * the device does itself (THRE enabled, a THR write that reached it).
   */
  const transmit = async (withFd: boolean): Promise<void> => {
    const irq = new Int32Array(new SharedArrayBuffer(4));
    const fd = withFd ? eventfd() : undefined;
    let mainRaised = 0;
    const out: Uint8Array[] = [];
    const s = new Serial16550(
      {
        fd,
        trigger() {
          mainRaised++;
          if (fd !== undefined) return eventfdSignal(fd);
          Atomics.add(irq, 0, 1);
          Atomics.notify(irq, 0);
        },
      },
      (b) => out.push(b.slice()),
    );
    const pio = new Bus();
    pio.insert(COM1, 8, 'com1', s);
    s.write(2, Uint8Array.of(0x01)); // FIFOs on, as the 8250 driver sets them
    const doorbell = newDoorbell();
    const mailbox = newMailbox();
    const server = new MailboxServer(doorbell, pio, new Bus(), (f) => { throw f.error; }, { share: 1 });
    server.add(mailbox);
    const serving = server.run();
    const draining = s.start();
    const w = new Worker(fileURLToPath(import.meta.url), {
      workerData: { claim: pio.claims()[0]!, mailbox, doorbell, irq, irqFd: fd, ms: 2500, seed: 0x5e71a1 } satisfies GuestData,
    });
    try {
      const r = await new Promise<GuestResult>((resolve, reject) => {
        w.once('message', resolve);
        w.once('error', reject);
      });
      s.stop();
      assert.is(r.stalled, undefined, 'the driver always got the next THRE interrupt');
      const got = Buffer.concat(out);
      assert.ok(r.sent.length > 10_000, `a real stream went through (${r.sent.length} bytes)`);
      assert.is(got.length, r.sent.length, 'no byte lost or added');
      assert.ok(got.equals(r.sent), 'bytes out in the order the guest wrote them');
      // Drained bytes raise THRE one batch at a time; pushed ones (irqfd) each set it again at
      // once, as QEMU's UART does, so the driver's interrupt loop goes on without a new one.
      if (!withFd) assert.ok(r.interrupts > r.sent.length / (4 * TX_LOADSZ), `THRE interrupts paced the transmitter (${r.interrupts})`);
      assert.ok(r.served > r.forwarded, `most accesses served in the vCPU thread (${r.served} served, ${r.forwarded} forwarded)`);
      if (withFd) {
        const byVcpu = r.lineRaises! - mainRaised;
        assert.ok(byVcpu > 4 * mainRaised, `the vCPU thread raised THRE for its pushes, main only for the device's own (vCPU ${byVcpu}, main ${mainRaised}; ${r.interrupts} interrupts taken)`);
      }
    } finally {
      s.stop();
      server.stop();
      await serving;
      await draining;
      await w.terminate();
      closeDoorbell(doorbell);
      if (fd !== undefined) close(fd);
    }
  };

  test('a guest thread transmitting through THRE interrupts while main drains: no interrupt lost, every byte out in order', () => transmit(false));

  test('the same with an irqfd line: the vCPU thread raises THRE for the bytes it pushes, none lost, every byte out in order', () => transmit(true));

  test.run();
}
