// KVM's binary statistics of one vCPU (KVM_GET_STATS_FD, Documentation/virt/kvm/api.rst):
// the kernel's own counters — every exit to KVM (not just those to userspace), interrupts
// injected, interrupt-window exits, page faults, emulated instructions, halts. A diagnosis reads
// them twice around a sample: a vCPU that burns CPU inside KVM_RUN with no exit to userspace
// shows here whether the guest exits to KVM at all, and whether KVM injects what is pending.

import { KVM_STATS_TYPE_CUMULATIVE, KVM_STATS_TYPE_MASK, KvmStatsDesc, KvmStatsHeader } from './layout';
import * as libc from './libc';

/** The counters of one read: name -> value, cumulative ones (that only grow) only. */
export type KvmCounters = Map<string, bigint>;

/**
 * Decodes a stats file's bytes (header, descriptors, data): every cumulative counter of one
 * value (histograms and instant/peak values are left out). Throws on a file that does not fit.
 */
export function parseKvmStats(file: Uint8Array): KvmCounters {
  if (file.byteLength < KvmStatsHeader.size) throw new RangeError(`a KVM stats file starts with a ${KvmStatsHeader.size}-byte header, not ${file.byteLength} bytes`);
  const h = KvmStatsHeader.read(file);
  const dv = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const descSize = KvmStatsDesc.size + h.nameSize;
  const out: KvmCounters = new Map();
  for (let i = 0; i < h.numDesc; i++) {
    const at = h.descOffset + i * descSize;
    if (at + descSize > file.byteLength) throw new RangeError(`KVM stats descriptor ${i} lies past the ${file.byteLength} bytes read`);
    const d = KvmStatsDesc.read(file.subarray(at, at + KvmStatsDesc.size));
    if ((d.flags & KVM_STATS_TYPE_MASK) !== KVM_STATS_TYPE_CUMULATIVE || d.size !== 1) continue;
    const nameBytes = file.subarray(at + KvmStatsDesc.size, at + descSize);
    const end = nameBytes.indexOf(0);
    const name = Buffer.from(nameBytes.subarray(0, end < 0 ? nameBytes.length : end)).toString('latin1');
    const dataAt = h.dataOffset + d.offset;
    if (dataAt + 8 > file.byteLength) throw new RangeError(`KVM stat ${name} lies past the ${file.byteLength} bytes read`);
    out.set(name, dv.getBigUint64(dataAt, true));
  }
  return out;
}

const STATS_BYTES = 64 * 1024;

/** Reads and decodes a stats fd (KVM_GET_STATS_FD) from its start. */
export function readKvmStats(fd: number): KvmCounters {
  const buf = new Uint8Array(STATS_BYTES);
  const n = libc.pread(fd, buf, 0);
  return parseKvmStats(buf.subarray(0, n));
}

/** What grew from `before` to `after`, by name, in the order of `after`; zero deltas left out. */
export function countersDelta(before: KvmCounters, after: KvmCounters): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, v] of after) {
    const d = v - (before.get(name) ?? 0n);
    if (d !== 0n) out[name] = Number(d);
  }
  return out;
}
