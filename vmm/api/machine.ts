// What the control API needs from a running machine: the `ApiMachine` interface. `Machine`
// (vmm/machine.ts) satisfies it structurally (checked at compile time below), and unit tests pass a
// fake, so nothing under vmm/api needs KVM. This file owns the interface only.

import type { MachineDiagnosis } from '../diagnosis';
import type { Duplex } from 'node:stream';
import type { MachineConfig } from '../config';
import type { ExitStatus, Machine } from '../machine';
import type { Package } from '../../bpf/package';
import type { HypercallCounters, HypercallResult } from '../../devices/hypercall/index';
import type { LoadedProgram } from '../paravirt';
import type { Policy } from '../scheduler/policy';
import type { SchedulerCounters, VcpuRow } from '../scheduler/scheduler';
import type { HostCpu } from '../scheduler/topology';
import type { VsockCounters } from '../../devices/virtio/vsock/index';
import type { BlockCounters } from '../../devices/virtio/block/index';
import type { RngCounters } from '../../devices/virtio/rng/index';
import type { HintStream } from '../hints/stream';
import type { HintProgram, RegistryCounters } from '../hints/registry';
import type { Actuators } from '../actuators';
import type { PrioPolicy } from '../scheduler/prio';
import type { TransportCounters } from '../../devices/virtio/mmio';

export interface ApiScheduler {
  table(): VcpuRow[];
  setPolicy(policy: Policy): void;
  setPool(cpus: readonly HostCpu[]): void;
  readonly currentPolicy: Policy;
  readonly counters: Readonly<SchedulerCounters>;
}

export interface ApiParavirt {
  load(pkg: Package): Promise<HypercallResult>;
  unload(handle: number): Promise<HypercallResult>;
  mapUpdate(handle: number, map: string, key: Uint8Array, value: Uint8Array, flags?: number): Promise<HypercallResult>;
  readonly loaded: ReadonlyMap<number, LoadedProgram>;
  readonly device: { counters(): HypercallCounters };
  readonly hintsSeen: number;
  readonly stream: HintStream;
  readonly registry: { readonly programs: ReadonlyMap<string, HintProgram>; readonly counters: Readonly<RegistryCounters> };
}

/** The actuators the API drives (vmm/actuators.ts). */
export type ApiActuators = Pick<Actuators, 'table' | 'setVcpuClass' | 'setHaltPoll' | 'haltPoll' | 'haltPollSource' | 'pause' | 'resume' | 'counters'>;
export type ApiPrio = Pick<PrioPolicy, 'mode' | 'max' | 'setMode' | 'setMax' | 'table' | 'counters'>;

export interface ApiMachine {
  readonly config: MachineConfig;
  readonly scheduler?: ApiScheduler;
  readonly paravirt?: ApiParavirt;
  readonly actuators?: ApiActuators;
  readonly prio?: ApiPrio;
  /** The vsock device: its counters, and in-process connections to guest ports (the agent route). */
  readonly vsock?: { readonly counters: VsockCounters; connect(port: number): Promise<Duplex> };
  /** virtio-blk drives (by id) and virtio-rng: their counters for metrics. */
  readonly drives?: readonly { readonly id: string; readonly counters: BlockCounters }[];
  readonly rng?: { readonly counters: RngCounters };
  readonly transports: readonly { readonly name: string; readonly transport: { readonly counters: TransportCounters } }[];
  readonly vcpuTids: readonly number[];
  vcpuExits(): Record<string, number>[];
  /** Accesses forwarded to the main thread, by device (and by register). */
  forwardedExits?(): { byDevice: Record<string, number>; deferred: readonly number[] };
  /** What the vCPUs and devices are doing and the console's last lines (GET /diagnosis; vmm/diagnosis.ts). */
  diagnose?(sampleMs?: number): Promise<MachineDiagnosis>;
  /** Types Ctrl-Alt-Del on the i8042 keyboard; false when its buffer has no room. */
  sendCtrlAltDel(): boolean;
  finish(status: ExitStatus): void;
  readonly exited: Promise<ExitStatus>;
}

// Compile-time proof that the real machine fits; fails the type check if vmm/machine.ts drifts.
type Fits<T extends ApiMachine> = T;
export type MachineFitsApi = Fits<Machine>;
