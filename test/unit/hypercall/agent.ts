// A simulated guest agent for the hypercall tests: it talks to the device only the way the C
// agent does (32-bit port reads/writes through the PIO bus, bytes in shared memory, per
// docs/hypercall.md), so the tests exercise the protocol rather than the device's internals.

import { Bus } from '../../../devices/bus';
import { HypercallDevice, type HypercallDeviceOptions } from '../../../devices/hypercall/device';
import { Cmd, HC_IO_LEN, HC_MAGIC, Reg } from '../../../devices/hypercall/registers';
import { HYPERCALL_PORT as HC_IO_BASE, HYPERCALL_SHMEM_ADDR as HC_SHM_BASE } from '../../../vmm/layout';
import {
  ShmHeader,
  SHM_MAGIC,
  decodeRequest,
  encodeHello,
  encodeHints,
  encodeReport,
  type HintsMsg,
  type ReportMsg,
  type WireRequest,
} from '../../../devices/hypercall/shmem';

export interface Rig {
  bus: Bus;
  dev: HypercallDevice;
  shm: Uint8Array;
  clock: { t: number };
}

/** A device on a PIO bus at 0x700 with 64 KiB of shared memory and a manual clock. */
export function rig(opts: Partial<HypercallDeviceOptions> = {}): Rig {
  const shm = opts.shm ?? new Uint8Array(64 * 1024);
  const clock = { t: 1000 };
  const dev = new HypercallDevice({ shm, shmBase: HC_SHM_BASE, now: () => clock.t, ...opts });
  const bus = new Bus();
  bus.insert(HC_IO_BASE, HC_IO_LEN, 'hypercall', dev);
  return { bus, dev, shm, clock };
}

export interface CallResult {
  status: number;
  result: number;
}

export class SimAgent {
  private readonly h: DataView;
  private g2hSeq = 0;

  /** The vCPU the agent's port writes come from (what the vCPU mailboxes tell the bus). */
  vcpu: number | undefined;

  constructor(private readonly bus: Bus, private readonly shm: Uint8Array, private readonly io = HC_IO_BASE) {
    this.h = new DataView(shm.buffer, shm.byteOffset, shm.length);
  }

  inl(reg: number): number {
    const b = new Uint8Array(4);
    this.bus.read(this.io + reg, b);
    return new DataView(b.buffer).getUint32(0, true);
  }

  outl(reg: number, value: number): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, value >>> 0, true);
    this.bus.write(this.io + reg, b, this.vcpu);
  }

  /** Discovery as the C agent does it; throws when something does not match. */
  probe(): { base: number; size: number; port: number } {
    if (this.inl(Reg.MAGIC) !== HC_MAGIC) throw new Error('bad register magic');
    if (this.inl(Reg.VERSION) !== 1) throw new Error('bad version');
    if (this.h.getUint32(ShmHeader.offsets.magic, true) !== SHM_MAGIC) throw new Error('bad shm magic');
    const base = this.inl(Reg.SHM_BASE_LO) + this.inl(Reg.SHM_BASE_HI) * 2 ** 32;
    return { base, size: this.inl(Reg.SHM_SIZE), port: this.inl(Reg.DOORBELL_PORT) };
  }

  /** Puts raw bytes in the g2h mailbox with an explicit g2h_len (may lie), then issues `cmd`. */
  sendRaw(cmd: number, msg: Uint8Array, g2hLen = msg.length): CallResult {
    const off = this.h.getUint32(ShmHeader.offsets.g2hOff, true);
    this.shm.set(msg.subarray(0, this.shm.length - off), off);
    this.h.setUint32(ShmHeader.offsets.g2hLen, g2hLen >>> 0, true);
    this.h.setUint32(ShmHeader.offsets.g2hSeq, ++this.g2hSeq, true);
    return this.call(cmd);
  }

  call(cmd: number): CallResult {
    this.outl(Reg.COMMAND, cmd);
    return { status: this.inl(Reg.STATUS), result: this.inl(Reg.RESULT) };
  }

  /** The default caps are the C agent's on this host: every bit up to HINT_SOURCE. */
  hello(name = 'sim-agent 1.0', caps = 0b111111, version = 1): CallResult {
    return this.sendRaw(Cmd.HELLO, encodeHello({ version, caps, pid: 42, name }));
  }

  /** FETCH; the request copied out of the h2g mailbox, or undefined when none. */
  fetch(): { call: CallResult; req: WireRequest | undefined } {
    const call = this.call(Cmd.FETCH);
    const len = this.h.getUint32(ShmHeader.offsets.h2gLen, true);
    if (call.status !== 0 || call.result === 0) return { call, req: undefined };
    if (len !== call.result) throw new Error(`h2g_len ${len} != RESULT ${call.result}`);
    const off = this.h.getUint32(ShmHeader.offsets.h2gOff, true);
    return { call, req: decodeRequest(this.shm.slice(off, off + len)) };
  }

  report(m: ReportMsg): CallResult {
    return this.sendRaw(Cmd.REPORT, encodeReport(m));
  }

  /** What the C agent does: ring-buffer samples copied verbatim (they carry their own header), padded to 8. */
  forwardSamples(samples: Uint8Array[], dropped = 0): CallResult {
    const padded = samples.map((s) => s.length + ((8 - (s.length % 8)) % 8));
    const b = new Uint8Array(8 + padded.reduce((x, y) => x + y, 0));
    const v = new DataView(b.buffer);
    v.setUint32(0, samples.length, true);
    v.setUint32(4, dropped, true);
    let off = 8;
    samples.forEach((s, i) => {
      b.set(s, off);
      off += padded[i] ?? 0;
    });
    return this.sendRaw(Cmd.HINTS, b);
  }

  hints(m: HintsMsg): CallResult {
    return this.sendRaw(Cmd.HINTS, encodeHints(m));
  }

  /** FETCH until empty, answering each request with `answer`. Returns the requests seen. */
  serve(answer: (req: WireRequest) => Omit<ReportMsg, 'requestId'>): WireRequest[] {
    const seen: WireRequest[] = [];
    for (;;) {
      const { req } = this.fetch();
      if (!req) return seen;
      seen.push(req);
      const r = this.report({ requestId: req.requestId, ...answer(req) });
      if (r.status !== 0) throw new Error(`REPORT ${req.requestId} got status ${r.status}`);
    }
  }
}

export const pkg = (id: string, size = 100, fill = 0xab): { id: string; digest: Uint8Array; bytes: Uint8Array } => ({
  id,
  digest: new Uint8Array(32).fill(id.length),
  bytes: new Uint8Array(size).fill(fill),
});

/** Lets promise callbacks run. */
export const tick = (): Promise<void> => new Promise((r) => setImmediate(r));
