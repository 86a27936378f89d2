// The `prio` hint program: guest real-time tasks (SCHED_FIFO/RR) reported with the guest CPU
// they live on; with --prio hinted the host raises that vCPU's thread to SCHED_FIFO (the
// double-scheduling problem). Package: bpf/programs/prio.ts; layout: bpf/hints.ts; policy:
// vmm/scheduler/prio.ts.

import { HintType, PRIO, decodeHints, type PrioHint } from '../../bpf/hints';
import { prioPackage } from '../../bpf/programs/prio';
import { hintKind, type HintProgram } from './registry';

export const prioProgram: HintProgram = {
  name: 'prio',
  description: 'guest real-time tasks (SCHED_FIFO/RR) per vCPU -> SCHED_FIFO vCPU threads (--prio hinted)',
  package: prioPackage,
  kinds: [
    hintKind<PrioHint>({
      type: HintType.PRIO, name: 'PRIO', size: PRIO.size,
      decode: (record) => decodeHints(record)[0] as PrioHint,
      handle: (h, host) => host.prio.onHint(h),
    }),
  ],
};
