// The `affinity` hint program (the seed paper's policy): the guest's sched_setaffinity calls
// become AFFINITY records, a pinned task's exit an UNPIN; the host pins vCPU threads through
// the vCPU scheduler (vmm/scheduler). Package: bpf/programs/affinity.ts; layouts: bpf/hints.ts.

import { AFFINITY, HintType, UNPIN, decodeHints, type AffinityHint, type UnpinHint } from '../../bpf/hints';
import { affinityPackage } from '../../bpf/programs/affinity';
import { hintKind, type HintProgram } from './registry';

/** One record as bpf/hints.ts decodes it (the registry checked its length first). */
function one<T>(record: Uint8Array): T {
  return decodeHints(record)[0] as T;
}

export const affinityProgram: HintProgram = {
  name: 'affinity',
  description: 'guest CPU affinity (sched_setaffinity, inherited at fork) -> vCPU thread pinning (--pin hinted)',
  package: affinityPackage,
  kinds: [
    hintKind<AffinityHint>({
      type: HintType.AFFINITY, name: 'AFFINITY', size: AFFINITY.size,
      // The scheduler's rate limits (100 hints/s VM-wide, 10 per task) before the decode: a
      // flood's surplus costs reading one u32 each (the tid), and is counted as rate-limited.
      // What the scheduler's VM-wide limit lets through: the device drops the rest before they
      // reach the main thread's queue (a flood's surplus then costs a header read in the exit).
      budget: (host) => ({ perSecond: host.scheduler.hintLimits.hintsPerSecond, burst: host.scheduler.hintLimits.hintBurst }),
      admit: (r, host) => host.scheduler.admitAffinityHint((r[AFFINITY.tid]! | (r[AFFINITY.tid + 1]! << 8) | (r[AFFINITY.tid + 2]! << 16) | (r[AFFINITY.tid + 3]! << 24)) >>> 0),
      decode: one,
      handle: (h, host) => host.scheduler.takeAffinityHint({ tgid: h.tgid, tid: h.tid, comm: h.comm, cpus: h.cpus }),
    }),
    hintKind<UnpinHint>({
      type: HintType.UNPIN, name: 'UNPIN', size: UNPIN.size,
      decode: one,
      handle: (h, host) => host.scheduler.onUnpinHint({ tid: h.tid }),
    }),
  ],
};
