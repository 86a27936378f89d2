// The control API's resources (docs/api.md): Firecracker's pre-boot resources (boot-source,
// machine-config, vsock, actions, instance info, vm/config) and tsvmm's own (scheduler, bpf
// programs, metrics). Owns the VM's API-visible state (pre-boot config, Not started/Running)
// and turns requests into calls on an `ApiMachine`. It must not know about HTTP framing
// (http.ts does) nor create KVM objects (the `start` callback does).

import { readFileSync, statSync } from 'node:fs';
import type { Duplex } from 'node:stream';
import { AGENT_VSOCK_PORT } from '../agent/connect';
import { ConfigError, DEFAULT_CMDLINE, MIN_MEMORY, type MachineConfig, validateConfig, validateMemory } from '../config';
import { MiB } from '../layout';
import { POLICIES, type Policy } from '../scheduler/policy';
import { hostPool, type HostCpu } from '../scheduler/topology';
import { HINT_PROGRAMS } from '../hints/programs';
import { entryLine, type StreamSink } from '../hints/stream';
import { CLASS_NAMES, checkClass } from '../actuators';
import { DEFAULT_PRIO_MAX, PRIO_MODES, type PrioMode } from '../scheduler/prio';
import { MapType, type Package, type PackageJson, packageFromElf, packageFromJson } from '../../bpf/package';
import { loadElf } from '../../bpf/elf';
import { collectMetrics, renderPrometheus } from '../metrics';
import { formatDiagnosis } from '../diagnosis';
import type { ApiMachine } from './machine';
import type { BodyLimits } from './wire';
import { check, describe, isPlainObject, ValidationError, type Spec } from './schema';
import { MAP_UPDATE_FLAGS } from '../../devices/hypercall/shmem';
import { CID_MAX, CID_MIN, validateVsockSpec, VsockSpecError } from '../../devices/virtio/vsock/spec';
import { DriveSpecError, MAX_DRIVES, orderDrives, validateDriveSpec, type DriveSpec } from '../../devices/virtio/block/spec';
import type { RateLimiterSpec, TokenBucketSpec } from '../../devices/rate-limiter';
import { TsvmmError } from '../../lib/errors';
import { isAbsolute } from 'node:path';
import { MAX_SHARES, badGuestDir, shareTag, type ShareConfig } from '../shares';

export const VMM_VERSION = '0.1.0';
export const APP_NAME = 'tsvmm';

/** A request failure with its HTTP status; the body is `{"fault_message": message}`. */
export class ApiError extends TsvmmError {
  constructor(readonly status: number, message: string, readonly allow?: string) {
    super(message);
  }
}

export interface ApiRequest {
  method: string;
  /** Path without the query string. */
  path: string;
  query: URLSearchParams;
  /** Parsed JSON body; undefined when the request had none. */
  body: unknown;
  accept: string;
}

export type ApiResponse =
  | { status: 200; json: unknown }
  | { status: 200; text: string; contentType: string }
  /** A response that goes on: `start` gets the sink once the headers are out (GET /hints?follow=1). */
  | { status: 200; stream: (sink: StreamSink) => void; contentType: string }
  | { status: 204 };

export type InstanceState = 'Not started' | 'Starting' | 'Running';

// --- request bodies (Firecracker's field names) -------------------------------------------

const BOOT_SOURCE = {
  kernel_image_path: { type: 'string', required: true, nonEmpty: true },
  initrd_path: { type: 'string', nonEmpty: true },
  boot_args: { type: 'string' },
  /** tsvmm's: false boots a bzImage through its own decompressor (`--no-unpack`). */
  unpack: { type: 'boolean' },
} as const satisfies Spec;

const MACHINE_CONFIG = {
  vcpu_count: { type: 'integer', required: true, min: 1, max: 254 },
  mem_size_mib: { type: 'integer', required: true, min: MIN_MEMORY / MiB },
  smt: { type: 'boolean' },
} as const satisfies Spec;

const VSOCK = {
  guest_cid: { type: 'integer', required: true, min: CID_MIN, max: CID_MAX },
  uds_path: { type: 'string', required: true, nonEmpty: true },
  vsock_id: { type: 'string' },
} as const satisfies Spec;

const DRIVE = {
  drive_id: { type: 'string', required: true, nonEmpty: true },
  path_on_host: { type: 'string', required: true, nonEmpty: true },
  is_root_device: { type: 'boolean', required: true },
  is_read_only: { type: 'boolean' },
} as const satisfies Spec;

const TOKEN_BUCKET = {
  size: { type: 'integer', required: true, min: 1 },
  one_time_burst: { type: 'integer', min: 0 },
  refill_time: { type: 'integer', required: true, min: 1 },
} as const satisfies Spec;

const RATE_LIMITER = {
  bandwidth: { type: 'object' },
  ops: { type: 'object' },
} as const satisfies Spec;

const ENTROPY = {
  rate_limiter: { type: 'object' },
} as const satisfies Spec;

/** tsvmm's virtio-fs share (Cloud Hypervisor calls it fs); mount_point "/" with shared_dir "/" is --rootfs host. */
const FS = {
  shared_dir: { type: 'string', required: true, nonEmpty: true },
  mount_point: { type: 'string', required: true, nonEmpty: true },
  read_only: { type: 'boolean' },
} as const satisfies Spec;

const ACTIONS = {
  action_type: { type: 'string', required: true, oneOf: ['InstanceStart', 'SendCtrlAltDel', 'FlushMetrics'] },
} as const satisfies Spec;

const SCHEDULER = {
  policy: { type: 'string', oneOf: POLICIES },
  host_cpus: { type: 'string', nonEmpty: true },
  prio: { type: 'string', oneOf: PRIO_MODES },
  prio_max: { type: 'integer', min: 1, max: 99 },
} as const satisfies Spec;

const VCPU_SCHED = {
  policy: { type: 'string', required: true, oneOf: CLASS_NAMES },
  priority: { type: 'integer', min: 0, max: 99 },
  nice: { type: 'integer', min: -20, max: 19 },
} as const satisfies Spec;

const VCPU_STATE = {
  state: { type: 'string', required: true, oneOf: ['Paused', 'Resumed'] },
} as const satisfies Spec;

const MAP_SET = {
  key: { type: 'any', required: true },
  value: { type: 'any', required: true },
  flags: { type: 'string', oneOf: ['any', 'noexist', 'exist'] },
} as const satisfies Spec;

const HALT_POLL = {
  max_ns: { type: 'integer', required: true, min: 0, max: 0xffff_ffff },
} as const satisfies Spec;

const BPF_LOAD = {
  builtin: { type: 'string', oneOf: HINT_PROGRAMS.map((p) => p.name) },
  package_json: { type: 'object' },
  elf_path: { type: 'string', nonEmpty: true },
  hint_map: { type: 'string', nonEmpty: true },
  name: { type: 'string', nonEmpty: true },
} as const satisfies Spec;

/** The pre-boot configuration, in API form. */
export interface Preboot {
  bootSource?: { kernel_image_path: string; initrd_path?: string; boot_args: string; unpack?: boolean };
  machineConfig: { vcpu_count: number; mem_size_mib: number; smt: boolean };
  vsock?: { guest_cid: number; uds_path: string; vsock_id?: string };
  /** Firecracker's drives, in the order they were first PUT (the root drive becomes vda). */
  drives: DriveBody[];
  /** virtio-rng: null when dropped (--no-rng); otherwise Firecracker's entropy body. */
  entropy: EntropyBody | null;
  /** Host directories over virtio-fs, in PUT order (their tags follow it). */
  fs: FsEntry[];
  scheduler: { policy: Policy; host_cpus?: string; prio: PrioMode; prio_max: number };
  acpi: boolean;
}

export interface DriveBody { drive_id: string; path_on_host: string; is_root_device: boolean; is_read_only: boolean }
interface BucketBody { size: number; one_time_burst?: number; refill_time: number }
export interface EntropyBody { rate_limiter?: { bandwidth?: BucketBody; ops?: BucketBody } }
export interface FsEntry {
  fs_id: string;
  shared_dir: string;
  mount_point: string;
  read_only: boolean;
}

export function parseFs(id: string, body: unknown, where = `fs/${id}`): FsEntry {
  const b = check(where, body, FS);
  if (!isAbsolute(b.shared_dir)) throw new ValidationError(`${where}.shared_dir: '${b.shared_dir}' is not an absolute path`);
  let dir = false;
  try {
    dir = statSync(b.shared_dir).isDirectory();
  } catch (e) {
    throw new ValidationError(`${where}.shared_dir: cannot open '${b.shared_dir}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (!dir) throw new ValidationError(`${where}.shared_dir: '${b.shared_dir}' is not a directory`);
  const root = b.mount_point === '/';
  if (root && (b.shared_dir !== '/' || b.read_only === false)) throw new ValidationError(`${where}.mount_point: "/" is the host's root, read-only: shared_dir must be "/"`);
  const bad = root ? undefined : badGuestDir(b.mount_point);
  if (bad) throw new ValidationError(`${where}.mount_point: ${bad}`);
  return { fs_id: id, shared_dir: b.shared_dir, mount_point: b.mount_point.replace(/(.)\/+$/, '$1'), read_only: root || (b.read_only ?? false) };
}

/** Adds or replaces (same fs_id) a share; a second share at one mount point is refused. */
export function putFs(list: FsEntry[], e: FsEntry): void {
  const clash = list.find((f) => f.mount_point === e.mount_point && f.fs_id !== e.fs_id);
  if (clash) throw new ValidationError(`fs/${e.fs_id}.mount_point: ${e.mount_point} is already fs/${clash.fs_id}'s`);
  const i = list.findIndex((f) => f.fs_id === e.fs_id);
  if (i >= 0) list[i] = e;
  else list.push(e);
  if (list.length > MAX_SHARES) {
    list.pop();
    throw new ValidationError(`fs/${e.fs_id}: at most ${MAX_SHARES} shares`);
  }
}

function checkFile(field: string, path: string): void {
  let st;
  try {
    st = statSync(path);
  } catch (e) {
    throw new ValidationError(`${field}: cannot open '${path}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (!st.isFile()) throw new ValidationError(`${field}: '${path}' is not a regular file`);
}

export function parseBootSource(body: unknown, where = 'boot-source'): NonNullable<Preboot['bootSource']> {
  const b = check(where, body, BOOT_SOURCE);
  checkFile(`${where}.kernel_image_path`, b.kernel_image_path);
  if (b.initrd_path !== undefined) checkFile(`${where}.initrd_path`, b.initrd_path);
  return { kernel_image_path: b.kernel_image_path, initrd_path: b.initrd_path, boot_args: b.boot_args ?? DEFAULT_CMDLINE, ...(b.unpack === false ? { unpack: false } : {}) };
}

export function parseMachineConfig(body: unknown, where = 'machine-config'): Preboot['machineConfig'] {
  const b = check(where, body, MACHINE_CONFIG);
  if (b.smt) throw new ValidationError(`${where}.smt: true is not supported (tsvmm exposes one thread per core)`);
  try {
    validateMemory(b.mem_size_mib * MiB);
  } catch (e) {
    throw new ValidationError(`${where}.mem_size_mib: ${(e as Error).message.replace(/^--memory /, '')}`);
  }
  return { vcpu_count: b.vcpu_count, mem_size_mib: b.mem_size_mib, smt: false };
}

export function parseVsock(body: unknown, where = 'vsock'): NonNullable<Preboot['vsock']> {
  const b = check(where, body, VSOCK);
  // The checks --vsock makes, for the API and the config file alike.
  try {
    validateVsockSpec({ cid: b.guest_cid, udsPath: b.uds_path }, { cid: `${where}.guest_cid`, path: `${where}.uds_path` });
  } catch (e) {
    if (e instanceof VsockSpecError) throw new ValidationError(e.message);
    throw e;
  }
  return { guest_cid: b.guest_cid, uds_path: b.uds_path, ...(b.vsock_id === undefined ? {} : { vsock_id: b.vsock_id }) };
}

/** PUT /drives/{id}: Firecracker's body; the id in the path and the body must agree. */
export function parseDrive(body: unknown, pathId: string | undefined, where = 'drives'): DriveBody {
  const b = check(where, body, DRIVE);
  if (pathId !== undefined && b.drive_id !== pathId) throw new ValidationError(`${where}.drive_id: '${b.drive_id}' does not match the path's '${pathId}'`);
  checkFile(`${where}.path_on_host`, b.path_on_host);
  const d = { drive_id: b.drive_id, path_on_host: b.path_on_host, is_root_device: b.is_root_device, is_read_only: b.is_read_only ?? false };
  try {
    validateDriveSpec(driveSpec(d), `${where}.drive_id`);
  } catch (e) {
    if (e instanceof DriveSpecError) throw new ValidationError(e.message);
    throw e;
  }
  return d;
}

const driveSpec = (d: DriveBody): DriveSpec => ({ id: d.drive_id, path: d.path_on_host, readOnly: d.is_read_only, root: d.is_root_device });

/** Adds or replaces (same id) a drive; at most one root device, at most MAX_DRIVES. */
export function putDrive(drives: DriveBody[], d: DriveBody): DriveBody[] {
  const next = drives.some((x) => x.drive_id === d.drive_id) ? drives.map((x) => (x.drive_id === d.drive_id ? d : x)) : [...drives, d];
  const root = next.filter((x) => x.is_root_device);
  if (root.length > 1) throw new ValidationError(`drives: ${root.map((x) => x.drive_id).join(' and ')} are both root devices (at most one)`);
  if (next.length > MAX_DRIVES) throw new ValidationError(`drives: at most ${MAX_DRIVES} drives`);
  return next;
}

function parseBucket(v: unknown, where: string): BucketBody {
  const b = check(where, v, TOKEN_BUCKET);
  return { size: b.size, refill_time: b.refill_time, ...(b.one_time_burst === undefined ? {} : { one_time_burst: b.one_time_burst }) };
}

/** PUT /entropy: Firecracker's body (an optional rate_limiter with bandwidth and ops buckets). */
export function parseEntropy(body: unknown, where = 'entropy'): EntropyBody {
  const b = check(where, body, ENTROPY);
  if (b.rate_limiter === undefined) return {};
  const r = check(`${where}.rate_limiter`, b.rate_limiter, RATE_LIMITER);
  return {
    rate_limiter: {
      ...(r.bandwidth === undefined ? {} : { bandwidth: parseBucket(r.bandwidth, `${where}.rate_limiter.bandwidth`) }),
      ...(r.ops === undefined ? {} : { ops: parseBucket(r.ops, `${where}.rate_limiter.ops`) }),
    },
  };
}

const toBucket = (b: BucketBody | undefined): TokenBucketSpec | undefined =>
  b && { size: b.size, refillTimeMs: b.refill_time, ...(b.one_time_burst === undefined ? {} : { oneTimeBurst: b.one_time_burst }) };
const fromBucket = (b: TokenBucketSpec | undefined): BucketBody | undefined =>
  b && { size: b.size, refill_time: b.refillTimeMs, ...(b.oneTimeBurst === undefined ? {} : { one_time_burst: b.oneTimeBurst }) };

function toRng(e: EntropyBody | null): MachineConfig['rng'] {
  if (e === null) return false;
  if (!e.rate_limiter) return undefined;
  const r: RateLimiterSpec = {};
  const bw = toBucket(e.rate_limiter.bandwidth);
  const ops = toBucket(e.rate_limiter.ops);
  if (bw) r.bandwidth = bw;
  if (ops) r.ops = ops;
  return { rateLimiter: r };
}

function fromRng(r: MachineConfig['rng']): EntropyBody | null {
  if (r === false) return null;
  const l = r?.rateLimiter;
  if (!l) return {};
  const bandwidth = fromBucket(l.bandwidth);
  const ops = fromBucket(l.ops);
  return { rate_limiter: { ...(bandwidth ? { bandwidth } : {}), ...(ops ? { ops } : {}) } };
}

export function parseScheduler(body: unknown, where = 'scheduler'): { policy?: Policy; host_cpus?: string; prio?: PrioMode; prio_max?: number } {
  const b = check(where, body, SCHEDULER);
  return { policy: b.policy as Policy | undefined, host_cpus: b.host_cpus, prio: b.prio as PrioMode | undefined, prio_max: b.prio_max };
}

/** Preboot → MachineConfig; needs a boot source. */
export function toMachineConfig(p: Preboot): MachineConfig {
  if (!p.bootSource) throw new ValidationError('boot-source: not configured (PUT /boot-source first)');
  return {
    kernel: p.bootSource.kernel_image_path,
    initrd: p.bootSource.initrd_path,
    cmdline: p.bootSource.boot_args,
    ...(p.bootSource.unpack === false ? { unpack: false } : {}),
    vcpus: p.machineConfig.vcpu_count,
    memory: p.machineConfig.mem_size_mib * MiB,
    acpi: p.acpi,
    vsock: p.vsock ? { cid: p.vsock.guest_cid, udsPath: p.vsock.uds_path } : undefined,
    drives: p.drives.length ? orderDrives(p.drives.map(driveSpec)) : undefined,
    rng: toRng(p.entropy),
    ...(p.fs.length ? {
      shares: p.fs.map((f, i): ShareConfig => ({
        hostDir: f.shared_dir, guestDir: f.mount_point, readOnly: f.read_only, tag: shareTag(i), ...(f.mount_point === '/' ? { root: true } : {}),
      })),
    } : {}),
    pin: p.scheduler.policy,
    hostCpus: p.scheduler.host_cpus,
    prio: p.scheduler.prio,
    prioMax: p.scheduler.prio_max,
  };
}

/** MachineConfig → Preboot (for a machine started from flags, and for GET /vm/config). */
export function fromMachineConfig(c: Partial<MachineConfig>): Preboot {
  return {
    bootSource: c.kernel ? { kernel_image_path: c.kernel, initrd_path: c.initrd, boot_args: c.cmdline ?? DEFAULT_CMDLINE, ...(c.unpack === false ? { unpack: false } : {}) } : undefined,
    machineConfig: { vcpu_count: c.vcpus ?? 1, mem_size_mib: Math.floor((c.memory ?? 256 * MiB) / MiB), smt: false },
    vsock: c.vsock ? { guest_cid: c.vsock.cid, uds_path: c.vsock.udsPath } : undefined,
    drives: (c.drives ?? []).map((d) => ({ drive_id: d.id, path_on_host: d.path, is_root_device: d.root, is_read_only: d.readOnly })),
    entropy: fromRng(c.rng),
    fs: (c.shares ?? []).map((s, i) => ({ fs_id: `fs${i}`, shared_dir: s.hostDir, mount_point: s.guestDir, read_only: s.readOnly })),
    scheduler: { policy: c.pin ?? 'none', host_cpus: c.hostCpus, prio: c.prio ?? 'none', prio_max: c.prioMax ?? DEFAULT_PRIO_MAX },
    acpi: c.acpi ?? true,
  };
}

/** The Firecracker-style `GET /vm/config` document (also the --config-file format). */
export function vmConfigDocument(p: Preboot): Record<string, unknown> {
  return {
    'boot-source': p.bootSource ?? null,
    'machine-config': p.machineConfig,
    vsock: p.vsock ?? null,
    drives: p.drives,
    entropy: p.entropy,
    fs: p.fs.length ? p.fs : null,
    scheduler: { policy: p.scheduler.policy, host_cpus: p.scheduler.host_cpus ?? null, prio: p.scheduler.prio, prio_max: p.scheduler.prio_max },
  };
}

/** Request body size limits: packages can be large, everything else is small. */
export const BODY_LIMIT = 64 * 1024;
export const BPF_BODY_LIMIT = 4 * 1024 * 1024;
/** The same as the API thread takes them (vmm/api/wire.ts). */
export const BODY_LIMITS: BodyLimits = { default: BODY_LIMIT, paths: { '/bpf/programs': BPF_BODY_LIMIT } };

export interface ControllerOptions<M extends ApiMachine> {
  id: string;
  /** Boots a machine (Machine.start in tsvmm; a fake in tests). */
  start: (config: MachineConfig) => Promise<M>;
  /** Initial pre-boot values (from CLI flags). */
  defaults?: Partial<MachineConfig>;
  /** Host CPU list → pool (default: hostPool over sysfs). */
  resolvePool?: (hostCpus: string) => HostCpu[];
  /** For FlushMetrics; absent: the action is refused. */
  flushMetrics?: () => void;
  /** How long PUT/DELETE /bpf/programs waits for the guest agent's answer. */
  agentTimeoutMs?: number;
  log?: (message: string) => void;
}

type Route = Partial<Record<'GET' | 'PUT' | 'PATCH' | 'DELETE', (req: ApiRequest, params: string[]) => Promise<ApiResponse> | ApiResponse>>;

const NO_CONTENT: ApiResponse = { status: 204 };

/**
 * One VM's API state: pre-boot configuration until InstanceStart, then the running machine.
 * `started` resolves with the machine, whether it was started by the API or attached.
 */
export class VmController<M extends ApiMachine = ApiMachine> {
  readonly id: string;
  private preboot: Preboot;
  private state: InstanceState = 'Not started';
  private m?: M;
  private resolveStarted!: (m: M) => void;
  readonly started: Promise<M>;
  private readonly routes: [RegExp, Route][];
  /**
   * The describe documents, by path: what GET of that path (any query, any body) answers, made
   * of nothing but the controller's own state (the pre-boot config and the instance state), so
   * it changes only when a request or attach() changes that state. The API thread answers these
   * GETs itself from main's last publication of describe() (http.ts: the consistency rule);
   * main's routes for them call the same functions.
   */
  private readonly describers: Record<string, () => unknown>;

  constructor(private readonly opts: ControllerOptions<M>) {
    this.id = opts.id;
    this.preboot = fromMachineConfig(opts.defaults ?? {});
    this.started = new Promise((r) => (this.resolveStarted = r));
    this.describers = {
      '/': () => this.instanceInfo(),
      '/machine-config': () => this.preboot.machineConfig,
      '/vm/config': () => vmConfigDocument(this.preboot),
      '/version': () => ({ vmm_version: VMM_VERSION, app_name: APP_NAME }),
    };
    const d = this.describers;
    this.routes = [
      [/^\/$/, { GET: () => ok(d['/']!()) }],
      [/^\/version$/, { GET: () => ok(d['/version']!()) }],
      [/^\/boot-source$/, { PUT: (r) => this.putPreboot('boot-source', () => (this.preboot.bootSource = parseBootSource(r.body))) }],
      [/^\/machine-config$/, {
        GET: () => ok(d['/machine-config']!()),
        PUT: (r) => this.putPreboot('machine-config', () => (this.preboot.machineConfig = parseMachineConfig(r.body))),
      }],
      [/^\/vsock$/, { PUT: (r) => this.putPreboot('vsock', () => (this.preboot.vsock = parseVsock(r.body))) }],
      [/^\/drives\/([^/]+)$/, { PUT: (r, p) => this.putPreboot('drives', () => (this.preboot.drives = putDrive(this.preboot.drives, parseDrive(r.body, decodeURIComponent(p[0]!))))) }],
      [/^\/entropy$/, { PUT: (r) => this.putPreboot('entropy', () => (this.preboot.entropy = parseEntropy(r.body))) }],
      [/^\/fs\/([A-Za-z0-9_.-]{1,64})$/, { PUT: (r, p) => this.putPreboot('fs', () => putFs(this.preboot.fs, parseFs(p[0]!, r.body))) }],
      [/^\/actions$/, { PUT: (r) => this.action(r.body) }],
      [/^\/vm\/config$/, { GET: () => ok(d['/vm/config']!()) }],
      [/^\/scheduler$/, { GET: () => ok(this.schedulerInfo()), PUT: (r) => this.putScheduler(r.body) }],
      [/^\/bpf\/programs$/, { GET: () => ok({ programs: this.programs(), builtins: HINT_PROGRAMS.map((p) => ({ name: p.name, description: p.description, hint_types: p.kinds.map((k) => ({ type: k.type, name: k.name })) })) }), PUT: (r) => this.loadProgram(r.body) }],
      [/^\/bpf\/programs\/([^/]+)$/, { DELETE: (_r, p) => this.unloadProgram(p[0]!) }],
      [/^\/bpf\/programs\/([^/]+)\/maps\/([^/]+)$/, { PUT: (r, p) => this.mapSet(p[0]!, decodeURIComponent(p[1]!), r.body) }],
      [/^\/hints$/, { GET: (r) => this.hints(r) }],
      [/^\/vcpus$/, { GET: () => ok({ vcpus: this.vcpuRows() }) }],
      [/^\/vcpus\/([^/]+)$/, { PATCH: (r, p) => this.vcpuState(p[0]!, r.body) }],
      [/^\/vcpus\/([^/]+)\/sched$/, { PUT: (r, p) => this.vcpuSched(p[0]!, r.body) }],
      [/^\/halt-poll$/, { GET: () => ok(this.haltPollInfo()), PUT: (r) => this.putHaltPoll(r.body) }],
      [/^\/metrics$/, { GET: (r) => this.metrics(r) }],
      [/^\/diagnosis$/, { GET: () => this.diagnosis() }],
    ];
  }

  /** Every describe document now, by path (see `describers`). */
  describe(): Record<string, unknown> {
    return Object.fromEntries(Object.entries(this.describers).map(([path, f]) => [path, f()]));
  }

  get instanceState(): InstanceState {
    return this.state;
  }

  get machine(): M | undefined {
    return this.m;
  }

  /** A machine started outside the API (from CLI flags). */
  attach(m: M): void {
    if (this.m) throw new Error('a machine is already attached');
    this.m = m;
    this.preboot = fromMachineConfig(m.config);
    this.state = 'Running';
    this.resolveStarted(m);
  }

  /**
   * A fresh connection to the guest agent (vsock port 52) for the upgraded POST /agent: the
   * caller speaks the agent protocol over it (tsvmm exec --api-sock).
   */
  async agentStream(): Promise<Duplex> {
    const m = this.m;
    if (!m || this.state !== 'Running') throw new ApiError(400, 'the VM is not running: its agent cannot be reached');
    if (!m.vsock) throw new ApiError(400, 'this VM has no vsock device, so no agent can be reached (start it with --vsock cid=N,uds=PATH and the agent initramfs)');
    try {
      return await m.vsock.connect(AGENT_VSOCK_PORT);
    } catch (e) {
      throw new ApiError(502, `cannot reach the guest agent on vsock port ${AGENT_VSOCK_PORT}: ${(e as Error).message}`);
    }
  }

  async handle(req: ApiRequest): Promise<ApiResponse> {
    for (const [re, route] of this.routes) {
      const match = re.exec(req.path);
      if (!match) continue;
      const fn = route[req.method as keyof Route];
      const allow = Object.keys(route).join(', ');
      if (!fn) throw new ApiError(405, `method ${req.method} is not allowed on ${req.path} (allowed: ${allow})`, allow);
      return fn(req, match.slice(1));
    }
    throw new ApiError(404, `unknown resource ${req.path}`);
  }

  private instanceInfo() {
    return { id: this.id, state: this.state === 'Running' ? 'Running' : 'Not started', vmm_version: VMM_VERSION, app_name: APP_NAME };
  }

  private putPreboot(what: string, apply: () => unknown): ApiResponse {
    if (this.state !== 'Not started') throw new ApiError(400, `${what}: the update operation is not allowed after boot (state ${this.state})`);
    apply();
    return NO_CONTENT;
  }

  private running(what: string): M {
    if (!this.m) throw new ApiError(400, `${what}: the machine is not running (state ${this.state}); start it with PUT /actions {"action_type": "InstanceStart"}`);
    return this.m;
  }

  private async action(body: unknown): Promise<ApiResponse> {
    const { action_type } = check('actions', body, ACTIONS);
    if (action_type === 'SendCtrlAltDel') {
      // As in Firecracker: the keys go to the guest's i8042 keyboard; what happens next (with
      // Linux's defaults, an immediate reboot and so tsvmm's exit) is the guest's business.
      if (!this.running('SendCtrlAltDel').sendCtrlAltDel()) {
        throw new ApiError(400, 'SendCtrlAltDel: the i8042 keyboard buffer is full (the guest has not read the previous keys; is its i8042 driver loaded?)');
      }
      this.opts.log?.('api: sent Ctrl-Alt-Del to the guest keyboard');
      return NO_CONTENT;
    }
    if (action_type === 'FlushMetrics') {
      if (!this.opts.flushMetrics) throw new ApiError(400, 'FlushMetrics: no metrics file is configured (--metrics-path)');
      this.opts.flushMetrics();
      return NO_CONTENT;
    }
    if (this.state !== 'Not started') throw new ApiError(400, `InstanceStart: the machine was already started (state ${this.state})`);
    const config = toMachineConfig(this.preboot);
    this.state = 'Starting';
    let m: M;
    try {
      m = await this.opts.start(config);
    } catch (e) {
      this.state = 'Not started';
      throw new ApiError(400, `InstanceStart failed: ${(e as Error).message}`);
    }
    this.m = m;
    this.state = 'Running';
    this.opts.log?.(`api: machine started (${config.vcpus} vCPU, ${config.memory / MiB} MiB, kernel ${config.kernel})`);
    this.resolveStarted(m);
    return NO_CONTENT;
  }

  private schedulerInfo() {
    const s = this.m?.scheduler;
    const prio = this.m?.prio;
    return {
      policy: s ? s.currentPolicy : this.preboot.scheduler.policy,
      host_cpus: this.preboot.scheduler.host_cpus ?? null,
      prio: prio ? prio.mode : this.preboot.scheduler.prio,
      prio_max: prio ? prio.max : this.preboot.scheduler.prio_max,
      vcpus: s ? s.table() : [],
      prio_vcpus: prio ? prio.table() : [],
      counters: s ? s.counters : null,
      prio_counters: prio ? prio.counters : null,
    };
  }

  private putScheduler(body: unknown): ApiResponse {
    const b = parseScheduler(body);
    const s = this.m?.scheduler;
    if (!this.m) {
      if (this.state !== 'Not started') throw new ApiError(400, `scheduler: the machine is ${this.state}; try again when it is running`);
      if (b.policy) this.preboot.scheduler.policy = b.policy;
      if (b.host_cpus) this.preboot.scheduler.host_cpus = b.host_cpus;
      if (b.prio) this.preboot.scheduler.prio = b.prio;
      if (b.prio_max !== undefined) this.preboot.scheduler.prio_max = b.prio_max;
      return ok(this.schedulerInfo());
    }
    if (!s) throw new ApiError(400, 'scheduler: this machine has no vCPU scheduler');
    // Resolve the pool first so that a bad list changes nothing.
    const pool = b.host_cpus === undefined ? undefined : (this.opts.resolvePool ?? ((h) => hostPool({ hostCpus: h })))(b.host_cpus);
    if (pool) {
      s.setPool(pool);
      this.preboot.scheduler.host_cpus = b.host_cpus;
    }
    if (b.policy) {
      s.setPolicy(b.policy);
      this.preboot.scheduler.policy = b.policy;
    }
    if (b.prio !== undefined || b.prio_max !== undefined) {
      const prio = this.m.prio;
      if (!prio) throw new ApiError(400, 'scheduler: this machine has no priority policy');
      if (b.prio_max !== undefined) prio.setMax(b.prio_max, 'API request');
      if (b.prio !== undefined) prio.setMode(b.prio, 'API request');
      this.preboot.scheduler.prio = prio.mode;
      this.preboot.scheduler.prio_max = prio.max;
    }
    this.opts.log?.(`api: scheduler set${b.policy ? ` policy=${b.policy}` : ''}${b.host_cpus ? ` host_cpus=${b.host_cpus}` : ''}${b.prio ? ` prio=${b.prio}` : ''}${b.prio_max !== undefined ? ` prio_max=${b.prio_max}` : ''}`);
    return ok(this.schedulerInfo());
  }

  private paravirt(what: string) {
    const pv = this.running(what).paravirt;
    if (!pv) throw new ApiError(400, `${what}: eBPF injection needs the hypercall device, which tsvmm adds only when the machine has vsock (PUT /vsock before InstanceStart, or --vsock)`);
    return pv;
  }

  /**
   * GET /hints: the recent records as NDJSON; `follow=1` streams every new one until the client
   * hangs up; `type=N[,M]` keeps only those record types.
   */
  private hints(req: ApiRequest): ApiResponse {
    const pv = this.paravirt('hints');
    const typeArg = req.query.get('type');
    let types: Set<number> | undefined;
    if (typeArg !== null) {
      const list = typeArg.split(',');
      if (!list.every((t) => /^\d+$/.test(t) && Number(t) <= 0xffff_ffff)) throw new ApiError(400, `hints: type '${typeArg}' must be record type numbers, comma-separated`);
      types = new Set(list.map(Number));
    }
    const follow = req.query.get('follow');
    if (follow !== null && follow !== '0' && follow !== '1') throw new ApiError(400, `hints: follow '${follow}' must be 0 or 1`);
    const contentType = 'application/x-ndjson';
    if (follow !== '1') return { status: 200, text: pv.stream.recent(types).map(entryLine).join(''), contentType };
    return { status: 200, contentType, stream: (sink) => void pv.stream.subscribe(sink, { types }) };
  }

  private actuators(what: string) {
    const a = this.running(what).actuators;
    if (!a) throw new ApiError(400, `${what}: this machine has no actuators`);
    return a;
  }

  private vcpuRows() {
    const a = this.m?.actuators;
    return a ? a.table() : [];
  }

  private vcpuIndex(what: string, param: string): number {
    if (!/^\d+$/.test(param) || Number(param) >= this.running(what).config.vcpus) {
      throw new ApiError(404, `${what}: no vCPU '${param}' (the machine has ${this.running(what).config.vcpus})`);
    }
    return Number(param);
  }

  private vcpuSched(param: string, body: unknown): ApiResponse {
    const a = this.actuators('vcpu sched');
    const vcpu = this.vcpuIndex('vcpu sched', param);
    const b = check(`vcpus/${vcpu}/sched`, body, VCPU_SCHED);
    let c;
    try {
      c = checkClass(b);
    } catch (e) {
      throw new ValidationError(`vcpus/${vcpu}/sched: ${(e as Error).message}`);
    }
    a.setVcpuClass(vcpu, c, 'API request');
    return ok(a.table()[vcpu]);
  }

  private async vcpuState(param: string, body: unknown): Promise<ApiResponse> {
    const a = this.actuators('vcpu state');
    const vcpu = this.vcpuIndex('vcpu state', param);
    const b = check(`vcpus/${vcpu}`, body, VCPU_STATE);
    if (b.state === 'Paused') await a.pause(vcpu, 'API request');
    else await a.resume(vcpu, 'API request');
    return ok(a.table()[vcpu]);
  }

  private haltPollInfo() {
    const a = this.actuators('halt-poll');
    return { max_ns: a.haltPoll ?? null, source: a.haltPollSource };
  }

  private putHaltPoll(body: unknown): ApiResponse {
    const a = this.actuators('halt-poll');
    const b = check('halt-poll', body, HALT_POLL);
    a.setHaltPoll(b.max_ns, 'API request');
    return ok(this.haltPollInfo());
  }

  private programs() {
    const pv = this.m?.paravirt;
    if (!pv) return [];
    return [...pv.loaded.values()].map((p) => ({ handle: p.handle, name: p.name, digest: p.digest, prog_ids: [...p.progIds], hints: p.hints }));
  }

  private async withAgentTimeout<T>(what: string, p: Promise<T>): Promise<T> {
    const ms = this.opts.agentTimeoutMs ?? 60_000;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new ApiError(504, `${what}: no answer from the guest agent within ${ms / 1000} s; the request stays queued and may still complete (see GET /bpf/programs)`)), ms);
    });
    try {
      return await Promise.race([p, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  private async loadProgram(body: unknown): Promise<ApiResponse> {
    const pv = this.paravirt('bpf load');
    const pkg = packageFromBody(body);
    const r = await this.withAgentTimeout(`bpf load '${pkg.name}'`, pv.load(pkg));
    if (!r.ok) {
      throw new ApiError(400, `bpf load '${pkg.name}': the guest agent answered ${r.outcome}${r.errno ? ` (errno ${r.errno})` : ''}${r.text ? `: ${r.text}` : ''}`);
    }
    const loaded = pv.loaded.get(r.handle);
    this.opts.log?.(`api: loaded eBPF package ${pkg.name} as handle ${r.handle}, guest prog ids ${r.progIds.join(' ')}`);
    return ok({ handle: r.handle, name: pkg.name, digest: loaded?.digest ?? null, prog_ids: [...r.progIds], outcome: r.outcome });
  }

  /** PUT /bpf/programs/{handle}/maps/{name} {key, value, flags?}: one element of a guest program's map. */
  private async mapSet(param: string, map: string, body: unknown): Promise<ApiResponse> {
    const pv = this.paravirt('bpf map-set');
    if (!/^\d+$/.test(param)) throw new ApiError(400, `bpf map-set: handle '${param}' is not a number`);
    const handle = Number(param);
    const p = pv.loaded.get(handle);
    if (!p) throw new ApiError(404, `bpf map-set: no program with handle ${handle} is loaded`);
    const spec = p.pkg.maps.find((m) => m.name === map);
    if (!spec) throw new ApiError(404, `bpf map-set: ${p.name} (handle ${handle}) has no map '${map}'`);
    if (spec.type === MapType.ringbuf) throw new ApiError(400, `bpf map-set: map '${map}' is a ring buffer: it has no elements to write`);
    const b = check('map', body, MAP_SET);
    const key = mapBytes('map.key', b.key, spec.keySize);
    const value = mapBytes('map.value', b.value, spec.valueSize);
    const flags = MAP_UPDATE_FLAGS[(b.flags ?? 'any') as keyof typeof MAP_UPDATE_FLAGS];
    const r = await this.withAgentTimeout(`bpf map-set ${handle} ${map}`, pv.mapUpdate(handle, map, key, value, flags));
    if (!r.ok) throw new ApiError(400, `bpf map-set ${handle} ${map}: the guest agent answered ${r.outcome}${r.errno ? ` (errno ${r.errno})` : ''}${r.text ? `: ${r.text}` : ''}`);
    this.opts.log?.(`api: map ${map} of ${p.name} (handle ${handle}): [${hexOf(key)}] = ${hexOf(value)}`);
    return ok({ handle, map, key: hexOf(key), value: hexOf(value) });
  }

  private async unloadProgram(param: string): Promise<ApiResponse> {
    const pv = this.paravirt('bpf unload');
    if (!/^\d+$/.test(param)) throw new ApiError(400, `bpf unload: handle '${param}' is not a number`);
    const handle = Number(param);
    if (!pv.loaded.has(handle)) throw new ApiError(404, `bpf unload: no program with handle ${handle} is loaded`);
    const r = await this.withAgentTimeout(`bpf unload ${handle}`, pv.unload(handle));
    if (!r.ok) throw new ApiError(400, `bpf unload ${handle}: the guest agent answered ${r.outcome}${r.text ? `: ${r.text}` : ''}`);
    this.opts.log?.(`api: unloaded eBPF handle ${handle}`);
    return NO_CONTENT;
  }

  /** GET /diagnosis: for a guest that does not answer (the vCPUs are sampled for 1 s and parked for a moment each). */
  private async diagnosis(): Promise<ApiResponse> {
    const m = this.running('diagnosis');
    if (!m.diagnose) throw new ApiError(501, 'diagnosis: this machine cannot be diagnosed');
    const d = await m.diagnose();
    return ok({ ...d, text: formatDiagnosis(d) });
  }

  private metrics(req: ApiRequest): ApiResponse {
    const m = collectMetrics(this.running('metrics'), this.id);
    const format = req.query.get('format');
    if (format !== null && format !== 'json' && format !== 'prometheus') throw new ApiError(400, `metrics: format '${format}' must be json or prometheus`);
    const prom = format === 'prometheus' || (format === null && /\btext\/plain\b/.test(req.accept) && !/application\/json/.test(req.accept));
    if (prom) return { status: 200, text: renderPrometheus(m), contentType: 'text/plain; version=0.0.4; charset=utf-8' };
    return ok(m);
  }
}

const hexOf = (b: Uint8Array) => Buffer.from(b).toString('hex');

/**
 * A map key or value from JSON: a non-negative integer (little-endian in the map's size, which
 * must be at most 8 bytes and hold it) or {"hex": "..."} (exactly `size` bytes, in memory order).
 */
export function mapBytes(field: string, v: unknown, size: number): Uint8Array {
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v) || v < 0) throw new ValidationError(`${field}: ${v} is not a non-negative integer`);
    if (size > 8 || (size < 8 && v >= 2 ** (8 * size))) throw new ValidationError(`${field}: ${v} does not fit the map's ${size}-byte ${field.endsWith('key') ? 'keys' : 'values'} (use {"hex": ...})`);
    const b = new Uint8Array(size);
    let x = BigInt(v);
    for (let i = 0; i < size; i++, x >>= 8n) b[i] = Number(x & 0xffn);
    return b;
  }
  if (isPlainObject(v) && typeof v.hex === 'string' && Object.keys(v).length === 1) {
    if (!/^([0-9a-fA-F]{2})*$/.test(v.hex)) throw new ValidationError(`${field}.hex: not an even number of hex digits`);
    if (v.hex.length !== 2 * size) throw new ValidationError(`${field}.hex: ${v.hex.length / 2} bytes, the map's are ${size}`);
    return new Uint8Array(Buffer.from(v.hex, 'hex'));
  }
  throw new ValidationError(`${field}: expected an integer or {"hex": "..."}, got ${describe(v)}`);
}

function ok(json: unknown): ApiResponse {
  return { status: 200, json };
}

/** PUT /bpf/programs body → a validated package. */
export function packageFromBody(body: unknown): Package {
  const b = check('bpf', body, BPF_LOAD);
  const sources = (['builtin', 'package_json', 'elf_path'] as const).filter((k) => b[k] !== undefined);
  if (sources.length !== 1) throw new ValidationError(`bpf: give exactly one of builtin, package_json, elf_path (got ${sources.length ? sources.join(', ') : 'none'})`);
  if (b.hint_map !== undefined && b.elf_path === undefined) throw new ValidationError('bpf.hint_map: only valid with elf_path');
  if (b.name !== undefined && b.elf_path === undefined) throw new ValidationError('bpf.name: only valid with elf_path');
  if (b.builtin !== undefined) return HINT_PROGRAMS.find((p) => p.name === b.builtin)!.package();
  if (b.package_json !== undefined) {
    try {
      return packageFromJson(b.package_json as unknown as PackageJson);
    } catch (e) {
      // Shape errors from a malformed document surface as TypeErrors: report them as bad input.
      throw new ValidationError(`bpf.package_json: ${(e as Error).message}`);
    }
  }
  const path = b.elf_path!;
  let bytes: Uint8Array;
  try {
    bytes = new Uint8Array(readFileSync(path));
  } catch (e) {
    throw new ValidationError(`bpf.elf_path: cannot read '${path}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const name = b.name ?? (path.split('/').pop() ?? 'program').replace(/\.o$/, '').replace(/[^A-Za-z0-9_.-]/g, '_');
  return packageFromElf(loadElf(bytes), { name, hintMap: b.hint_map });
}

// --- config file -----------------------------------------------------------------------------

const CONFIG_FILE = {
  'boot-source': { type: 'object', required: true },
  'machine-config': { type: 'object' },
  vsock: { type: 'object' },
  drives: { type: 'any' },
  entropy: { type: 'object' },
  fs: { type: 'any' },
  scheduler: { type: 'object' },
} as const satisfies Spec;

/**
 * A Firecracker-style configuration document ({"boot-source": …, "machine-config": …,
 * "vsock": …}, plus tsvmm's "scheduler"): every section validated with field-level messages.
 * Sections that are null count as absent (GET /vm/config writes nulls).
 */
export function parseConfigDocument(doc: unknown, base: Partial<MachineConfig> = {}): MachineConfig {
  // "entropy": null is the one null that says something: no virtio-rng (GET /vm/config after --no-rng).
  const noRng = isPlainObject(doc) && doc.entropy === null;
  if (isPlainObject(doc)) doc = Object.fromEntries(Object.entries(doc).filter(([, v]) => v !== null));
  const d = check('config', doc, CONFIG_FILE);
  const p = fromMachineConfig(base);
  p.bootSource = parseBootSource(d['boot-source'], 'boot-source');
  if (d['machine-config'] !== undefined) p.machineConfig = parseMachineConfig(d['machine-config'], 'machine-config');
  if (d.vsock !== undefined) p.vsock = parseVsock(d.vsock, 'vsock');
  if (d.drives !== undefined) {
    if (!Array.isArray(d.drives)) throw new ValidationError(`drives: expected an array, got ${describe(d.drives)}`);
    p.drives = [];
    (d.drives as unknown[]).forEach((x, i) => (p.drives = putDrive(p.drives, parseDrive(x, undefined, `drives[${i}]`))));
  }
  if (d.entropy !== undefined) p.entropy = parseEntropy(d.entropy, 'entropy');
  if (noRng) p.entropy = null;
  if (d.fs !== undefined) {
    if (!Array.isArray(d.fs)) throw new ValidationError('fs: must be an array of {"fs_id", "shared_dir", "mount_point", "read_only"}');
    p.fs = [];
    d.fs.forEach((f: unknown, i: number) => {
      const id = isPlainObject(f) && typeof f.fs_id === 'string' ? f.fs_id : `fs${i}`;
      const body = isPlainObject(f) ? Object.fromEntries(Object.entries(f).filter(([k]) => k !== 'fs_id')) : f;
      putFs(p.fs, parseFs(id, body, `fs[${i}]`));
    });
  }
  if (d.scheduler !== undefined) {
    const s = parseScheduler(d.scheduler, 'scheduler');
    if (s.policy) p.scheduler.policy = s.policy;
    if (s.host_cpus) p.scheduler.host_cpus = s.host_cpus;
    if (s.prio) p.scheduler.prio = s.prio;
    if (s.prio_max !== undefined) p.scheduler.prio_max = s.prio_max;
  }
  return toMachineConfig(p);
}

export function readConfigFile(path: string, base: Partial<MachineConfig> = {}): MachineConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError(`--config-file ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`--config-file ${path}: not valid JSON: ${(e as Error).message}`);
  }
  try {
    const c = parseConfigDocument(doc, base);
    validateConfig(c);
    return c;
  } catch (e) {
    if (e instanceof ValidationError || e instanceof VsockSpecError || e instanceof ConfigError) throw new ConfigError(`--config-file ${path}: ${e.message}`);
    throw e;
  }
}
