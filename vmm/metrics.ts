// Metrics: gathers the counters the machine's parts already keep (scheduler, hypercall device,
// vsock, virtio-mmio transports, loaded eBPF programs) into one JSON document, renders it as
// Prometheus text, and optionally appends it as JSON lines to a file on a timer. It owns the
// naming and the formats only; it must not count anything itself.

import { closeSync, openSync, writeSync } from 'node:fs';
import type { ApiMachine } from './api/machine';

/** A counter group: numbers, or one level of labelled numbers (e.g. drops by reason). */
export type CounterGroup = Record<string, number | Record<string, number>>;

export interface ProgramMetrics {
  handle: number;
  name: string;
  digest: string;
  prog_ids: number[];
  hints: number;
}

export interface Metrics {
  /** Milliseconds since the epoch. */
  utc_timestamp_ms: number;
  vm_id: string;
  vcpus: number;
  /** KVM exits by reason, per vCPU (index = vCPU). */
  vcpu_exits: Record<string, number>[];
  /** Accesses forwarded from the vCPU threads to the main thread, by device (bus range name). */
  forwarded_exits?: Record<string, number>;
  /** Forwarded accesses that waited because their vCPU had used its share of the main thread, per vCPU (vmm/vcpu/serve.ts). */
  forwarded_deferred?: number[];
  scheduler?: CounterGroup;
  /** The hint registry (records decoded, unknown, short, handler errors, by name) and the stream's readers. */
  hints?: CounterGroup;
  hint_stream?: CounterGroup;
  /** vCPU class changes, halt-poll changes, pauses (vmm/actuators.ts) and the prio policy. */
  actuators?: CounterGroup;
  prio?: CounterGroup;
  hypercall?: CounterGroup;
  vsock?: CounterGroup;
  /** virtio-blk, by drive id (requests, bytes, rejected by reason, host I/O errors). */
  block?: Record<string, CounterGroup>;
  /** virtio-rng (requests, bytes, throttled by the rate limiter). */
  entropy?: CounterGroup;
  /** By transport name (e.g. virtio-vsock). */
  transports: Record<string, CounterGroup>;
  programs: ProgramMetrics[];
}

/** Copies numbers and one level of number records; anything else (future fields) is skipped. */
function group(src: object): CounterGroup {
  const out: CounterGroup = {};
  for (const [k, v] of Object.entries(src)) {
    if (typeof v === 'number') out[k] = v;
    else if (v && typeof v === 'object') {
      const inner: Record<string, number> = {};
      for (const [ik, iv] of Object.entries(v as Record<string, unknown>)) if (typeof iv === 'number') inner[ik] = iv;
      out[k] = inner;
    }
  }
  return out;
}

export function collectMetrics(m: ApiMachine, vmId: string, now: () => number = Date.now): Metrics {
  const out: Metrics = { utc_timestamp_ms: now(), vm_id: vmId, vcpus: m.config.vcpus, vcpu_exits: m.vcpuExits(), transports: {}, programs: [] };
  if (m.forwardedExits) {
    const f = m.forwardedExits();
    out.forwarded_exits = { ...f.byDevice };
    out.forwarded_deferred = [...f.deferred];
  }
  if (m.scheduler) out.scheduler = group(m.scheduler.counters);
  if (m.actuators) out.actuators = group(m.actuators.counters);
  if (m.prio) out.prio = group(m.prio.counters);
  if (m.paravirt) {
    out.hints = group(m.paravirt.registry.counters);
    out.hint_stream = group(m.paravirt.stream.counters);
    out.hypercall = { ...group(m.paravirt.device.counters()), hintRecordsSeen: m.paravirt.hintsSeen };
    for (const p of m.paravirt.loaded.values()) {
      out.programs.push({ handle: p.handle, name: p.name, digest: p.digest, prog_ids: [...p.progIds], hints: p.hints });
    }
  }
  if (m.vsock) out.vsock = group(m.vsock.counters);
  if (m.drives?.length) out.block = Object.fromEntries(m.drives.map((d) => [d.id, group(d.counters)]));
  if (m.rng) out.entropy = group(m.rng.counters);
  for (const t of m.transports) out.transports[t.name] = group(t.transport.counters);
  return out;
}

/** camelCase / kebab-case → snake_case, restricted to Prometheus' metric-name alphabet. */
export function metricName(...parts: string[]): string {
  return parts
    .map((p) => p.replace(/([a-z0-9])([A-Z])/g, '$1_$2').replace(/[^a-zA-Z0-9_]/g, '_').toLowerCase())
    .join('_');
}

function labelValue(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function labels(l: Record<string, string>): string {
  const e = Object.entries(l);
  return e.length ? `{${e.map(([k, v]) => `${k}="${labelValue(v)}"`).join(',')}}` : '';
}

/** The label a nested record's keys get, by the record's name (default `key`). */
const NESTED_LABEL: Record<string, string> = { dropped: 'reason', rejected: 'reason', calls: 'command', errors: 'status', hintsByType: 'type', hintTypeDropped: 'type', byName: 'type' };

/**
 * Prometheus text exposition (version 0.0.4): `tsvmm_<group>_<name>{labels} value`, one
 * `# TYPE` line per metric name. Everything tsvmm counts only grows, so all are counters
 * except the gauges listed (vcpus, per-program ids).
 */
export function renderPrometheus(m: Metrics): string {
  const samples = new Map<string, { type: 'counter' | 'gauge'; lines: string[] }>();
  const add = (name: string, type: 'counter' | 'gauge', l: Record<string, string>, v: number) => {
    let s = samples.get(name);
    if (!s) samples.set(name, (s = { type, lines: [] }));
    s.lines.push(`${name}${labels(l)} ${Number.isFinite(v) ? v : 0}`);
  };
  const addGroup = (g: string, counters: CounterGroup, base: Record<string, string>) => {
    for (const [k, v] of Object.entries(counters)) {
      if (typeof v === 'number') add(metricName('tsvmm', g, k), 'counter', base, v);
      else for (const [ik, iv] of Object.entries(v)) add(metricName('tsvmm', g, k), 'counter', { ...base, [NESTED_LABEL[k] ?? 'key']: ik }, iv);
    }
  };
  add('tsvmm_vcpus', 'gauge', {}, m.vcpus);
  m.vcpu_exits.forEach((byReason, vcpu) => {
    for (const [reason, n] of Object.entries(byReason)) add('tsvmm_vcpu_exits', 'counter', { vcpu: String(vcpu), reason }, n);
  });
  for (const [device, n] of Object.entries(m.forwarded_exits ?? {})) add('tsvmm_forwarded_exits', 'counter', { device }, n);
  m.forwarded_deferred?.forEach((n, vcpu) => add('tsvmm_forwarded_deferred', 'counter', { vcpu: String(vcpu) }, n));
  if (m.scheduler) addGroup('scheduler', m.scheduler, {});
  for (const g of ['hints', 'hint_stream', 'actuators', 'prio'] as const) {
    const c = m[g];
    if (c) addGroup(g, c, {});
  }
  if (m.hypercall) addGroup('hypercall', m.hypercall, {});
  if (m.vsock) addGroup('vsock', m.vsock, {});
  for (const [drive, c] of Object.entries(m.block ?? {})) addGroup('block', c, { drive });
  if (m.entropy) addGroup('entropy', m.entropy, {});
  for (const [device, c] of Object.entries(m.transports)) addGroup('transport', c, { device });
  for (const p of m.programs) {
    const l = { handle: String(p.handle), name: p.name };
    add('tsvmm_program_hints', 'counter', l, p.hints);
    add('tsvmm_program_loaded', 'gauge', { ...l, digest: p.digest }, 1);
  }
  let text = '';
  for (const [name, s] of samples) text += `# TYPE ${name} ${s.type}\n${s.lines.join('\n')}\n`;
  return text;
}

/**
 * Appends one JSON line of metrics to `path` every `intervalSec` seconds (and once at stop, so
 * the file ends with the final numbers). The timer is unref'd: it never keeps tsvmm alive.
 */
export class MetricsWriter {
  private fd: number | undefined;
  private readonly timer: NodeJS.Timeout;

  constructor(path: string, intervalSec: number, private readonly sample: () => Metrics) {
    if (!(intervalSec > 0) || !Number.isFinite(intervalSec)) throw new RangeError(`--metrics-interval ${intervalSec} must be a positive number of seconds`);
    this.fd = openSync(path, 'a', 0o600);
    this.timer = setInterval(() => this.flush(), intervalSec * 1000);
    this.timer.unref();
  }

  flush(): void {
    if (this.fd !== undefined) writeSync(this.fd, JSON.stringify(this.sample()) + '\n');
  }

  stop(): void {
    clearInterval(this.timer);
    try {
      this.flush();
    } finally {
      if (this.fd !== undefined) closeSync(this.fd);
      this.fd = undefined;
    }
  }
}
