// Hint record layouts (docs/hints.md): the one place that knows the bytes eBPF hint
// programs write into the ring buffer. The built-in programs take their field offsets from
// here, and the host decodes forwarded batches with `decodeHints`. Knows nothing about
// how batches travel or what the scheduler does with them.

import { TsvmmError } from '../lib/errors';

/** Type 0 is never a hint: it is the hypercall transport's SOURCE record (devices/hypercall/shmem.ts). */
export const HintType = { AFFINITY: 1, UNPIN: 2, PRIO: 3 } as const;
export type HintTypeName = keyof typeof HintType;

/** Every record: u32 type, u32 len (total bytes, header included). */
export const HINT_HEADER = { type: 0, len: 4, size: 8 } as const;

/** AFFINITY record: after a successful sched_setaffinity. */
export const AFFINITY = {
  size: 64,
  tgid: 8, tid: 12, comm: 16, mask: 32,
  commLen: 16, maskWords: 4,
} as const;
/** Bytes of the user's mask the program copies (CPUs 0..255). */
export const AFFINITY_MASK_BYTES = AFFINITY.maskWords * 8;

/** UNPIN record: a task that had an AFFINITY record exited. */
export const UNPIN = { size: 16, tid: 8, tgid: 12 } as const;

/**
 * PRIO record (the `prio` program): a guest task's real-time priority on a guest CPU, or that
 * it has none any more. `rtprio` 1..99 = SCHED_FIFO/RR at that priority, 0 = no longer real
 * time there (policy changed, exited); `event` says what the program saw.
 */
export const PRIO = { size: 32, tid: 8, cpu: 12, rtprio: 16, policy: 20, event: 24 } as const;
export const PrioEvent = { SET: 1, MIGRATE: 2, EXIT: 3, FORK: 4 } as const;
export type PrioEventName = keyof typeof PrioEvent;
const prioEventNames = new Map<number, PrioEventName>(Object.entries(PrioEvent).map(([k, v]) => [v, k as PrioEventName]));

export interface AffinityHint {
  type: 'AFFINITY';
  tgid: number;
  tid: number;
  comm: string;
  /** CPU ids whose bit is set, ascending. */
  cpus: number[];
  /** The raw 256-bit mask, 4 little-endian words. */
  mask: bigint[];
}
export interface UnpinHint { type: 'UNPIN'; tid: number; tgid: number }
export interface PrioHint {
  type: 'PRIO';
  tid: number;
  /** Guest CPU (= vCPU) the task is on. */
  cpu: number;
  /** 1..99: real time at that priority; 0: not real time any more. Guest-written: unchecked here. */
  rtprio: number;
  /** Kernel policy number the program saw (1 SCHED_FIFO, 2 SCHED_RR, 0 SCHED_OTHER, ...). */
  policy: number;
  /** What the program saw; UNKNOWN for a code this host does not know. */
  event: PrioEventName | 'UNKNOWN';
}
/** A record of a type this host does not know; skipped by consumers, kept for logging. */
export interface UnknownHint { type: 'UNKNOWN'; code: number; bytes: Uint8Array }
export type Hint = AffinityHint | UnpinHint | PrioHint | UnknownHint;

export class HintDecodeError extends TsvmmError {}

/**
 * Decode a batch of back-to-back records. Unknown types are returned as UNKNOWN (not
 * errors); a record with a bad length ends the batch with HintDecodeError, since nothing
 * after it can be framed.
 */
export function decodeHints(batch: Uint8Array): Hint[] {
  const dv = new DataView(batch.buffer, batch.byteOffset, batch.byteLength);
  const out: Hint[] = [];
  for (let o = 0; o < batch.length; ) {
    if (batch.length - o < HINT_HEADER.size) throw new HintDecodeError(`hint batch byte ${o}: ${batch.length - o} trailing bytes, a record header needs ${HINT_HEADER.size}`);
    const type = dv.getUint32(o + HINT_HEADER.type, true);
    const len = dv.getUint32(o + HINT_HEADER.len, true);
    if (len < HINT_HEADER.size || len > batch.length - o) throw new HintDecodeError(`hint batch byte ${o}: record length ${len} out of ${HINT_HEADER.size}..${batch.length - o}`);
    const need = type === HintType.AFFINITY ? AFFINITY.size : type === HintType.UNPIN ? UNPIN.size : type === HintType.PRIO ? PRIO.size : HINT_HEADER.size;
    if (len < need) throw new HintDecodeError(`hint batch byte ${o}: type ${type} record of ${len} bytes, needs ${need}`);
    if (type === HintType.AFFINITY) {
      // The set bits with integer maths, 32 at a time, and a mask word as a BigInt only when it
      // is not 0; the comm byte by byte (latin1). A guest sends these by the thousand: a BigInt
      // shift per bit cost ~20 µs a record, Buffer's latin1 decode and 4 getBigUint64 another µs.
      const mask: bigint[] = [];
      const cpus: number[] = [];
      for (let w = 0; w < AFFINITY.maskWords; w++) {
        const at = o + AFFINITY.mask + w * 8;
        const lo = dv.getUint32(at, true);
        const hi = dv.getUint32(at + 4, true);
        for (let bits = lo; bits !== 0; bits &= bits - 1) cpus.push(w * 64 + 31 - Math.clz32(bits & -bits));
        for (let bits = hi; bits !== 0; bits &= bits - 1) cpus.push(w * 64 + 63 - Math.clz32(bits & -bits));
        mask.push(lo === 0 && hi === 0 ? 0n : (BigInt(hi) << 32n) | BigInt(lo));
      }
      let comm = '';
      for (let i = o + AFFINITY.comm, end = i + AFFINITY.commLen; i < end && batch[i] !== 0; i++) comm += String.fromCharCode(batch[i]!);
      out.push({ type: 'AFFINITY', tgid: dv.getUint32(o + AFFINITY.tgid, true), tid: dv.getUint32(o + AFFINITY.tid, true), comm, cpus, mask });
    } else if (type === HintType.UNPIN) {
      out.push({ type: 'UNPIN', tid: dv.getUint32(o + UNPIN.tid, true), tgid: dv.getUint32(o + UNPIN.tgid, true) });
    } else if (type === HintType.PRIO) {
      const u = (f: number) => dv.getUint32(o + f, true);
      out.push({ type: 'PRIO', tid: u(PRIO.tid), cpu: u(PRIO.cpu), rtprio: u(PRIO.rtprio), policy: u(PRIO.policy), event: prioEventNames.get(u(PRIO.event)) ?? 'UNKNOWN' });
    } else {
      out.push({ type: 'UNKNOWN', code: type, bytes: new Uint8Array(batch.subarray(o, o + len)) }); // a copy, never a view of a pooled Buffer
    }
    o += len;
  }
  return out;
}

/** Encode records (tests, and host-side tools that replay hints). */
export function encodeHint(h: AffinityHint | UnpinHint | PrioHint): Uint8Array {
  if (h.type === 'PRIO') {
    const b = new Uint8Array(PRIO.size);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, HintType.PRIO, true);
    dv.setUint32(4, PRIO.size, true);
    dv.setUint32(PRIO.tid, h.tid, true);
    dv.setUint32(PRIO.cpu, h.cpu, true);
    dv.setUint32(PRIO.rtprio, h.rtprio, true);
    dv.setUint32(PRIO.policy, h.policy, true);
    dv.setUint32(PRIO.event, h.event === 'UNKNOWN' ? 0 : PrioEvent[h.event], true);
    return b;
  }
  if (h.type === 'UNPIN') {
    const b = new Uint8Array(UNPIN.size);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, HintType.UNPIN, true);
    dv.setUint32(4, UNPIN.size, true);
    dv.setUint32(UNPIN.tid, h.tid, true);
    dv.setUint32(UNPIN.tgid, h.tgid, true);
    return b;
  }
  const b = new Uint8Array(AFFINITY.size);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, HintType.AFFINITY, true);
  dv.setUint32(4, AFFINITY.size, true);
  dv.setUint32(AFFINITY.tgid, h.tgid, true);
  dv.setUint32(AFFINITY.tid, h.tid, true);
  b.set(Buffer.from(h.comm, 'latin1').subarray(0, AFFINITY.commLen - 1), AFFINITY.comm);
  const words = [0n, 0n, 0n, 0n];
  for (const c of h.cpus) {
    if (!Number.isInteger(c) || c < 0 || c >= AFFINITY.maskWords * 64) throw new HintDecodeError(`cpu ${c} outside 0..255`);
    words[c >> 6] = words[c >> 6]! | (1n << BigInt(c & 63));
  }
  words.forEach((w, i) => dv.setBigUint64(AFFINITY.mask + i * 8, w, true));
  return b;
}
