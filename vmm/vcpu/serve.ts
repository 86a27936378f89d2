// The main-thread end of the vCPU mailboxes: waits on the shared doorbell and answers each
// forwarded port/MMIO access through the PIO or MMIO bus. Owns the answer rule: every request
// gets a response, whatever the device does. A device that throws is a bug in tsvmm, not in
// the guest, but the guest can reach it: it must neither take the VMM down (an unhandled
// rejection ends the process) nor leave the vCPU waiting for an answer that never comes.
// It must not start or stop workers (threads.ts does).

import type { Bus } from '../../devices/bus';
import { KIND_PIO, MB, STATE_REQUEST, STATE_RESPONSE, mailboxData } from './mailbox';

/** One access a device failed to handle. */
export interface DeviceFault {
  kind: 'pio' | 'mmio';
  addr: number;
  size: number;
  isWrite: boolean;
  error: Error;
}

/** How many registers byRegister names before it counts the rest as `other` (a guest picks the offsets). */
export const REGISTER_KEYS = 256;

export class MailboxServer {
  private readonly mailboxes: Int32Array[] = [];
  private running = false;
  /** Accesses whose device threw (answered as an unclaimed address would be). */
  faults = 0;
  /** Forwarded accesses by device (its bus range's name; `unclaimed` for none). */
  readonly byDevice: Record<string, number> = {};
  /**
   * Forwarded accesses by register, `name+0xOFFSET r|w` (what is left to serve in the vCPU
   * threads); at most REGISTER_KEYS keys, the rest counted under `other`.
   */
  readonly byRegister: Record<string, number> = {};
  private registerKeys = 0;

  constructor(
    private readonly doorbell: Int32Array,
    private readonly pio: Bus,
    private readonly mmio: Bus,
    private readonly onFault: (f: DeviceFault) => void,
  ) {}

  add(mailbox: Int32Array): void {
    this.mailboxes.push(mailbox);
  }

  /** Answers requests until stop(); resolves when it has stopped. */
  async run(): Promise<void> {
    this.running = true;
    while (this.running) {
      const seen = Atomics.load(this.doorbell, 0);
      this.mailboxes.forEach((mb, vcpu) => {
        if (Atomics.load(mb, MB.STATE) === STATE_REQUEST) this.serve(mb, vcpu);
      });
      const w = Atomics.waitAsync(this.doorbell, 0, seen);
      if (w.async) await w.value;
    }
  }

  stop(): void {
    this.running = false;
    Atomics.add(this.doorbell, 0, 1);
    Atomics.notify(this.doorbell, 0);
  }

  private count(bus: Bus, addr: number, size: number, isWrite: boolean): void {
    const hit = bus.find(addr, size);
    const name = hit?.name ?? 'unclaimed';
    this.byDevice[name] = (this.byDevice[name] ?? 0) + 1;
    let key = `${name}+0x${(hit?.offset ?? addr).toString(16)} ${isWrite ? 'w' : 'r'}`;
    if (this.byRegister[key] === undefined) {
      if (this.registerKeys >= REGISTER_KEYS) key = 'other';
      else this.registerKeys++;
    }
    this.byRegister[key] = (this.byRegister[key] ?? 0) + 1;
  }

  /** `vcpu`: mailboxes are added in vCPU order, so a mailbox's index is its vCPU. */
  private serve(mb: Int32Array, vcpu: number): void {
    const size = mb[MB.SIZE]!;
    const addr = (mb[MB.ADDR_LO]! >>> 0) + mb[MB.ADDR_HI]! * 0x1_0000_0000;
    const data = mailboxData(mb).subarray(0, Math.min(size, 8));
    const pio = mb[MB.KIND] === KIND_PIO;
    const isWrite = mb[MB.IS_WRITE] !== 0;
    this.count(pio ? this.pio : this.mmio, addr, data.length, isWrite);
    try {
      if (isWrite) (pio ? this.pio : this.mmio).write(addr, data, vcpu);
      else (pio ? this.pio : this.mmio).read(addr, data);
    } catch (e) {
      this.faults++;
      if (!isWrite) data.fill(0xff);
      const fault: DeviceFault = { kind: pio ? 'pio' : 'mmio', addr, size, isWrite, error: e instanceof Error ? e : new Error(String(e)) };
      try {
        this.onFault(fault);
      } catch {
        // Reporting is best effort; the answer below is not.
      }
    } finally {
      Atomics.store(mb, MB.STATE, STATE_RESPONSE);
      Atomics.notify(mb, MB.STATE);
    }
  }
}
