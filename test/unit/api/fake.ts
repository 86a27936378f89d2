// A machine without KVM for the API tests: a real VcpuScheduler (pinning nothing), a fake
// paravirt that answers loads like an agent would, fake vsock/transport counters.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ApiMachine, ApiParavirt } from '../../../vmm/api/machine';
import type { MachineConfig } from '../../../vmm/config';
import type { ExitStatus } from '../../../vmm/machine';
import type { MachineDiagnosis } from '../../../vmm/diagnosis';
import type { Package } from '../../../bpf/package';
import { packageDigest } from '../../../bpf/package';
import type { HypercallCounters, HypercallResult } from '../../../devices/hypercall/index';
import type { LoadedProgram } from '../../../vmm/paravirt';
import { VcpuScheduler } from '../../../vmm/scheduler/scheduler';
import type { HostCpu } from '../../../vmm/scheduler/topology';
import type { Duplex } from 'node:stream';
import * as net from 'node:net';
import { newCounters } from '../../../devices/virtio/vsock/counters';
import type { TransportCounters } from '../../../devices/virtio/mmio';
import { ApiServer } from '../../../vmm/api/http';
import { VmController } from '../../../vmm/api/resources';
import { HintStream } from '../../../vmm/hints/stream';
import { HintRegistry } from '../../../vmm/hints/registry';
import { HINT_PROGRAMS } from '../../../vmm/hints/programs';
import type { Actuators } from '../../../vmm/actuators';
import type { PrioPolicy } from '../../../vmm/scheduler/prio';
import { fakeHost, type FakeHost } from '../hints/fake-host';

export const cpu = (n: number): HostCpu => ({ cpu: n, core: n, coreId: n, packageId: 0, dieId: 0, siblings: [n] });

export class FakeParavirt implements ApiParavirt {
  readonly loaded = new Map<number, LoadedProgram>();
  readonly stream = new HintStream();
  readonly registry = new HintRegistry(HINT_PROGRAMS);
  hintsSeen = 0;
  next = 1;
  refuse?: string;
  /** Never answer (agent absent). */
  hang = false;
  readonly device = { counters: (): HypercallCounters => ({ calls: { HELLO: 1 }, errors: {}, hintBatches: 2, hintRecords: 5 } as unknown as HypercallCounters) };
  async load(pkg: Package): Promise<HypercallResult> {
    if (this.hang) return new Promise(() => {});
    const handle = this.next++;
    const base = { requestId: handle, op: 'load' as const, handle, errno: 0 };
    if (this.refuse) return { ...base, ok: false, outcome: 'REFUSED', progIds: [], text: this.refuse };
    const progIds = pkg.programs.map((_, i) => 100 + i);
    this.loaded.set(handle, { handle, name: pkg.name, digest: packageDigest(pkg), progIds, hints: 3, pkg });
    return { ...base, ok: true, outcome: 'OK', progIds, text: '' };
  }
  /** Map writes the fake agent applied: handle, map, key and value as hex. */
  readonly mapWrites: string[] = [];
  async mapUpdate(handle: number, map: string, key: Uint8Array, value: Uint8Array): Promise<HypercallResult> {
    this.mapWrites.push(`${handle} ${map} ${Buffer.from(key).toString('hex')}=${Buffer.from(value).toString('hex')}`);
    return { requestId: 98, op: 'map-update', handle, errno: 0, ok: true, outcome: 'OK', progIds: [], text: '' };
  }
  async unload(handle: number): Promise<HypercallResult> {
    this.loaded.delete(handle);
    return { requestId: 99, op: 'unload', handle, errno: 0, ok: true, outcome: 'OK', progIds: [], text: '' };
  }
}

export class FakeMachine implements ApiMachine {
  readonly scheduler: VcpuScheduler;
  readonly paravirt?: FakeParavirt;
  /** Actuators and prio policy over fake threads (fake.threads holds each thread's class). */
  readonly fake: FakeHost;
  readonly actuators: Actuators;
  readonly prio: PrioPolicy;
  readonly vsock?: { counters: ReturnType<typeof newCounters>; connect(port: number): Promise<Duplex> };
  /** Where vsock connections go (a test's stand-in for the guest); none: refused. */
  vsockConnect?: (port: number) => Promise<Duplex>;
  readonly transports: { name: string; transport: { counters: TransportCounters } }[] = [];
  readonly vcpuTids: number[];
  vcpuExits(): Record<string, number>[] {
    return this.vcpuTids.map((_, i) => ({ io: 10 + i, mmio: 3, forwarded: 5 }));
  }
  /** GET /diagnosis: a fixed diagnosis (a hung boot) with a console tail. */
  async diagnose(sampleMs = 1000): Promise<MachineDiagnosis> {
    return {
      uptimeMs: 12_000, sampleMs,
      vcpus: this.vcpuTids.map((tid, vcpu) => ({ vcpu, tid, worker: 'in KVM_RUN', lastExit: 'io', exits: { io: 10 + vcpu }, exitsInSample: 0, mpState: 'halted' })),
      devices: [], serialInterrupts: 3, console: { lines: ['[    1.0] booting', 'tsvmm-init: ready'], totalBytes: 40 },
    };
  }
  readonly applied: { vcpu: number; cpus: number[] }[] = [];
  finished?: ExitStatus;
  /** Ctrl-Alt-Del presses the fake keyboard took; `keyboardFull` makes it refuse them. */
  ctrlAltDels = 0;
  keyboardFull = false;
  sendCtrlAltDel(): boolean {
    if (this.keyboardFull) return false;
    this.ctrlAltDels++;
    return true;
  }
  private end!: (s: ExitStatus) => void;
  readonly exited = new Promise<ExitStatus>((r) => (this.end = r));
  constructor(readonly config: MachineConfig) {
    this.vcpuTids = Array.from({ length: config.vcpus }, (_, i) => 1000 + i);
    this.fake = fakeHost(config.vcpus, { prio: config.prio ?? 'none', prioMax: config.prioMax });
    this.actuators = this.fake.host.actuators;
    this.prio = this.fake.host.prio;
    this.scheduler = new VcpuScheduler({
      pool: [cpu(0), cpu(1), cpu(2), cpu(3)], vcpus: config.vcpus, policy: config.pin,
      apply: (vcpu, cpus) => this.applied.push({ vcpu, cpus: [...cpus] }), log: () => {},
    });
    this.scheduler.setVcpuThreads(this.vcpuTids);
    if (config.vsock) {
      this.paravirt = new FakeParavirt();
      const counters = newCounters();
      counters.connectionsOpened = 2;
      counters.dropped['bad-type'] = 1;
      this.vsock = { counters, connect: (port) => (this.vsockConnect ? this.vsockConnect(port) : Promise.reject(new Error(`nothing listens on guest port ${port}`))) };
      this.transports.push({ name: 'virtio-vsock', transport: { counters: { notifications: 7, interrupts: 5, interruptsCoalesced: 0, errors: 0, needsReset: 0, resets: 1 } } });
    }
  }
  finish(s: ExitStatus): void {
    this.finished ??= s;
    this.end(s);
  }
}

export function tmp(): string {
  return mkdtempSync(join(tmpdir(), 'tsvmm-api-'));
}

/** A kernel-looking file (the API checks that paths exist, not what they hold). */
export function fakeKernel(dir: string): string {
  const p = join(dir, 'vmlinux');
  writeFileSync(p, 'not really a kernel');
  return p;
}

export interface Rig {
  dir: string;
  sock: string;
  kernel: string;
  server: ApiServer;
  ctl: VmController<FakeMachine>;
  starts: MachineConfig[];
  close(): Promise<void>;
}

export async function rig(opts: { attach?: Partial<MachineConfig>; headersTimeoutMs?: number; requestTimeoutMs?: number; maxConnections?: number; agentTimeoutMs?: number; failStart?: string } = {}): Promise<Rig> {
  const dir = tmp();
  const sock = join(dir, 'api.sock');
  const kernel = fakeKernel(dir);
  const starts: MachineConfig[] = [];
  const ctl = new VmController<FakeMachine>({
    id: 'testvm',
    start: async (c) => {
      if (opts.failStart) throw new Error(opts.failStart);
      starts.push(c);
      return new FakeMachine(c);
    },
    resolvePool: (list) => list.split(',').map((n) => cpu(Number(n))),
    agentTimeoutMs: opts.agentTimeoutMs,
  });
  if (opts.attach) {
    ctl.attach(new FakeMachine({ kernel, cmdline: 'console=ttyS0', vcpus: 2, memory: 64 << 20, acpi: true, pin: 'none', ...opts.attach }));
  }
  const server = await ApiServer.listen({
    path: sock, handle: (r) => ctl.handle(r), agent: () => ctl.agentStream(), describe: () => ctl.describe(),
    headersTimeoutMs: opts.headersTimeoutMs, requestTimeoutMs: opts.requestTimeoutMs, maxConnections: opts.maxConnections,
  });
  return { dir, sock, kernel, server, ctl, starts, close: () => server.close() };
}

/** Raw bytes to the API socket, and everything it answered until it closed; `halfClose` ends our side after them. */
export function rawExchange(sock: string, bytes: string, { halfClose = false } = {}): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const c = net.connect(sock);
    let out = '';
    c.on('data', (d) => (out += d));
    c.on('close', () => resolve(out));
    c.on('error', reject);
    if (halfClose) c.end(bytes);
    else c.write(bytes);
  });
}
