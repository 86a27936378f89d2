// A HintHost over fakes for unit tests: a real VcpuScheduler, PrioPolicy and Actuators whose
// syscalls land in plain objects (each vCPU thread's class, the halt-poll value, paused flags).

import { Actuators } from '../../../vmm/actuators';
import type { ThreadSchedAttr } from '../../../kvm/libc';
import { PrioPolicy, type PrioMode } from '../../../vmm/scheduler/prio';
import { VcpuScheduler } from '../../../vmm/scheduler/scheduler';
import type { HintHost } from '../../../vmm/hints/registry';
import { cpu } from '../api/fake';

export interface FakeHost {
  host: HintHost;
  /** Each fake vCPU thread's class, by tid. */
  threads: Map<number, ThreadSchedAttr>;
  tids: number[];
  paused: boolean[];
  haltPoll: { ns: number | undefined };
  log: string[];
}

export function fakeHost(vcpus: number, opts: { prio?: PrioMode; prioMax?: number; now?: () => number } = {}): FakeHost {
  const log: string[] = [];
  const tids = Array.from({ length: vcpus }, (_, i) => 1000 + i);
  const threads = new Map<number, ThreadSchedAttr>(tids.map((t) => [t, { policy: 0, priority: 0, nice: 0 }]));
  const paused = new Array<boolean>(vcpus).fill(false);
  const haltPoll = { ns: undefined as number | undefined };
  const thread = (tid: number) => {
    const t = threads.get(tid);
    if (!t) throw new Error(`ESRCH tid ${tid}`);
    return t;
  };
  const actuators = new Actuators({
    vcpus, tids: () => tids,
    setattr: (tid, a) => {
      thread(tid);
      threads.set(tid, { ...a });
    },
    getattr: (tid) => ({ ...thread(tid) }),
    setHaltPoll: (ns) => (haltPoll.ns = ns),
    defaultHaltPoll: () => 200000,
    pause: async (v) => void (paused[v] = true),
    resume: async (v) => void (paused[v] = false),
    isPaused: (v) => paused[v]!,
    log: (m) => log.push(m),
  });
  const scheduler = new VcpuScheduler({ pool: Array.from({ length: vcpus }, (_, i) => cpu(i)), vcpus, policy: 'hinted', apply: () => undefined, log: (m) => log.push(m), now: opts.now });
  const prio = new PrioPolicy({ vcpus, mode: opts.prio ?? 'hinted', max: opts.prioMax, boost: (v, c, why) => actuators.boost(v, c, why), log: (m) => log.push(m), now: opts.now });
  scheduler.setVcpuThreads(tids);
  return { host: { vcpus, scheduler, prio, actuators, log: (m) => log.push(m) }, threads, tids, paused, haltPoll, log };
}
