// The paper's loop, assembled: the hypercall device (packages host→guest, hint batches
// guest→host), its vsock doorbell to the guest agent, and the hint registry that decodes every
// record, hands it to its program's handler (vCPU pinning, vCPU priority, ...) and publishes it
// on the hint stream. Owns the wiring and the package bookkeeping (what is loaded, so that an
// agent restart can be repaired); it must not parse shared memory or decide placements.

import type { Duplex } from 'node:stream';
import { HC_DOORBELL_PORT, HypercallDevice, HypercallResult, LostProgram, hypercallCmdline } from '../devices/hypercall/index';
import { HintRegistry, type HintHost, type HintProgram } from './hints/registry';
import { HintStream } from './hints/stream';
import { MapType, Package, packageDigest, serializePackage } from '../bpf/package';
import { VcpuScheduler } from './scheduler/scheduler';
import { AgentDoorbell } from './agent/doorbell';
import type { Policy } from './scheduler/policy';
import { hostPool } from './scheduler/topology';
import { setThreadAffinity } from './scheduler/affinity';
import { guestText } from './log';
import { HYPERCALL_PORT, HYPERCALL_SHMEM_ADDR, HYPERCALL_SHMEM_SIZE } from './layout';
import { TsvmmError } from '../lib/errors';

/** A map write the host refused before asking the guest (no such handle or map, wrong sizes). */
export class MapUpdateError extends TsvmmError {
  constructor(readonly code: 'unknown-handle' | 'unknown-map' | 'bad-size', message: string) {
    super(message);
  }
}

/** The vCPU scheduler of a machine, pinning real threads. */
export function newScheduler(vcpus: number, policy: Policy, hostCpus: string | undefined, log: (m: string) => void): VcpuScheduler {
  return new VcpuScheduler({
    pool: hostPool(hostCpus === undefined ? {} : { hostCpus }),
    vcpus,
    policy,
    apply: (_vcpu, cpus, tid) => setThreadAffinity(tid, cpus),
    log,
  });
}

export interface LoadedProgram {
  handle: number;
  name: string;
  digest: string;
  progIds: readonly number[];
  hints: number;
  /** The package as loaded (its map specs: map writes are checked against them). */
  pkg: Package;
}

export class Paravirt {
  readonly device: HypercallDevice;
  readonly scheduler: VcpuScheduler;
  readonly loaded = new Map<number, LoadedProgram>();
  readonly registry: HintRegistry;
  readonly stream = new HintStream();
  private readonly doorbell: AgentDoorbell;
  private readonly host: HintHost;
  hintsSeen = 0;

  constructor(opts: {
    shm: Uint8Array;
    host: HintHost;
    programs: readonly HintProgram[];
    connect: (port: number) => Promise<Duplex>;
    log: (m: string) => void;
    /** The device's milliseconds clock (its budgets'; tests step it). */
    now?: () => number;
  }) {
    this.registry = new HintRegistry(opts.programs);
    this.device = new HypercallDevice({ shm: opts.shm, shmBase: HYPERCALL_SHMEM_ADDR, hintTypeBudgets: this.registry.budgets(opts.host), now: opts.now });
    this.host = opts.host;
    this.scheduler = opts.host.scheduler;
    this.device.onAnyHint((record, type, source, vcpu) => this.onRecord(record, type, source, vcpu, opts.log));
    this.doorbell = new AgentDoorbell(() => opts.connect(HC_DOORBELL_PORT), {
      maxAttempts: 600,
      onError: (e) => opts.log(`doorbell: guest agent not reachable on vsock port ${HC_DOORBELL_PORT} yet: ${e.message}`),
    });
    this.device.onDoorbellNeeded(() => this.doorbell.ring());
    this.device.onAgentHello((info, lost) => {
      opts.log(`guest agent ${guestText(info.name)} (pid ${info.pid}) connected, session ${info.session}`);
      this.reload(lost, opts.log);
    });
  }

  /** The kernel command line fragment that tells the agent where the device is. */
  static cmdline(): string {
    return hypercallCmdline({ ioBase: HYPERCALL_PORT, shmBase: HYPERCALL_SHMEM_ADDR, shmSize: HYPERCALL_SHMEM_SIZE, doorbellPort: HC_DOORBELL_PORT });
  }

  /**
   * Every record: decoded and handled by its kind, then published on the stream. `source`: the
   * handle whose ring buffer it came from (the device checked it is loaded). Returns whether a
   * kind knows its type.
   */
  private onRecord(record: Uint8Array, type: number, source: number | undefined, vcpu: number | undefined, log: (m: string) => void): boolean {
    this.hintsSeen++;
    const p = source === undefined ? undefined : this.loaded.get(source);
    if (p) p.hints++;
    const meta = { type, source, program: p?.name, vcpu, time: performance.timeOrigin + performance.now() };
    this.stream.publish(this.registry.dispatch(record, meta, this.host, (e, k) => log(`hint handler for ${k.name} failed: ${e.message}`)));
    return this.registry.kind(type) !== undefined;
  }

  /** Loads a package into the guest; resolves with the agent's report. */
  async load(pkg: Package): Promise<HypercallResult> {
    const bytes = serializePackage(pkg);
    const digest = packageDigest(pkg);
    const r = await this.device.submit({
      op: 'load',
      pkg: { id: pkg.name, digest: Buffer.from(digest, 'hex'), bytes },
    });
    if (r.ok) this.loaded.set(r.handle, { handle: r.handle, name: pkg.name, digest, progIds: r.progIds, hints: 0, pkg });
    return r;
  }

  /**
   * Writes one element of map `map` of the loaded package `handle` (the agent applies it with
   * bpf_map_update_elem): a host policy tuning a guest program. Key and value must have the
   * map's exact sizes (checked here, and again by the agent against the map it created).
   */
  async mapUpdate(handle: number, map: string, key: Uint8Array, value: Uint8Array, flags = 0): Promise<HypercallResult> {
    const p = this.loaded.get(handle);
    if (!p) throw new MapUpdateError('unknown-handle', `no program is loaded under handle ${handle}`);
    const spec = p.pkg.maps.find((m) => m.name === map);
    if (!spec) throw new MapUpdateError('unknown-map', `${p.name} (handle ${handle}) has no map '${map}' (it has ${p.pkg.maps.map((m) => m.name).join(', ') || 'none'})`);
    if (spec.type === MapType.ringbuf) throw new MapUpdateError('bad-size', `map '${map}' is a ring buffer: it has no elements to write`);
    if (key.length !== spec.keySize) throw new MapUpdateError('bad-size', `map '${map}' has ${spec.keySize}-byte keys, got ${key.length} bytes`);
    if (value.length !== spec.valueSize) throw new MapUpdateError('bad-size', `map '${map}' has ${spec.valueSize}-byte values, got ${value.length} bytes`);
    return this.device.submit({ op: 'map-update', handle, map, key, value, flags });
  }

  async unload(handle: number): Promise<HypercallResult> {
    const r = await this.device.submit({ op: 'unload', handle });
    if (r.ok) this.loaded.delete(handle);
    return r;
  }

  /** An agent restart loses its programs: load them again. */
  private reload(lost: readonly LostProgram[], log: (m: string) => void): void {
    for (const l of lost) {
      const p = this.loaded.get(l.handle);
      if (!p) continue;
      this.loaded.delete(l.handle);
      log(`reloading ${p.name} after an agent restart`);
      this.load(p.pkg).catch((e: Error) => log(`reload of ${p.name} failed: ${e.message}`));
    }
  }

  close(): void {
    this.device.close();
    this.doorbell.close();
  }
}
