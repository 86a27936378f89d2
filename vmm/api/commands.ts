// The API client subcommands: `tsvmm bpf load|list|unload`, `tsvmm sched show|set`,
// `tsvmm metrics`, `tsvmm ps`. Human tables by default, `--json` for scripts. Owns the
// presentation only; every action is one request to the VM's API socket (client.ts).

import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { apiCall, apiJson, apiStream, ApiClientError } from './client';
import { listVms, type VmEntry } from './registry';
import { UsageError } from '../../lib/errors';

const COMMAND_USAGE = `tsvmm bpf load [--api-sock S] (affinity | prio | --package FILE.json | --elf FILE.o [--hint-map MAP] [--name N])
tsvmm bpf list [--api-sock S] [--json]
tsvmm bpf unload [--api-sock S] HANDLE
tsvmm bpf map-set [--api-sock S] HANDLE MAP KEY VALUE [--flags any|noexist|exist]
                  KEY, VALUE: an integer (little-endian, the map's size) or hex:BYTES
tsvmm hints watch [--api-sock S] [--type N]... [--json]
tsvmm hints record [--api-sock S] [--type N]... FILE
                   every hint record the host receives, live (NDJSON in FILE until Ctrl-C)
tsvmm sched show [--api-sock S] [--json]
tsvmm sched set [--api-sock S] [--policy none|static|hinted] [--host-cpus LIST]
                [--prio none|hinted] [--prio-max N] [--json]
tsvmm vcpu show [--api-sock S] [--json]
tsvmm vcpu sched [--api-sock S] VCPU --policy other|batch|idle|fifo|rr [--priority P] [--nice N]
tsvmm vcpu pause|resume [--api-sock S] VCPU
tsvmm halt-poll [--api-sock S] [NANOSECONDS]
tsvmm metrics [--api-sock S] [--prometheus]
tsvmm ps [--json]
`;
const USAGE_NOTE = `  talk to a VM started with 'tsvmm run --api-sock S' (docs/api.md); without --api-sock,
  the only running VM that has an API socket is used.
`;
export const API_USAGE = COMMAND_USAGE + USAGE_NOTE;


/** The control commands API_USAGE documents (`tsvmm CMD --help` prints CMD's part of it). */
export const CONTROL_COMMANDS = ['bpf', 'hints', 'sched', 'vcpu', 'halt-poll', 'metrics', 'ps'] as const;

/** API_USAGE's lines for one control command (with their continuation lines) and its note. */
export function controlUsage(cmd: (typeof CONTROL_COMMANDS)[number]): string {
  let mine = false;
  const lines = COMMAND_USAGE.trimEnd().split('\n').filter((l) => {
    if (l.startsWith('tsvmm ')) mine = l.startsWith(`tsvmm ${cmd} `) || l === `tsvmm ${cmd}`;
    return mine;
  });
  return `${lines.join('\n')}\n${USAGE_NOTE}`;
}

/** --api-sock, or the one running VM of this user that has a socket. */
function socketFor(flag: string | undefined): string {
  if (flag !== undefined) return flag;
  const socks = listVms().filter((v) => v.api_sock !== null);
  if (socks.length === 1) return socks[0]!.api_sock!;
  throw new UsageError(socks.length === 0 ? 'no running VM with an API socket (start one with tsvmm run --api-sock PATH, or give --api-sock)' : `${socks.length} VMs have API sockets: choose one with --api-sock (see tsvmm ps)`);
}

function table(header: string[], rows: string[][]): string {
  const w = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(w[i]!))).join('  ').trimEnd() + '\n';
  return line(header) + rows.map(line).join('');
}

const out = (s: string) => process.stdout.write(s);

interface Program { handle: number; name: string; digest: string | null; prog_ids: number[]; hints?: number; outcome?: string }

export function formatPrograms(programs: Program[]): string {
  if (programs.length === 0) return 'no eBPF programs loaded\n';
  return table(['HANDLE', 'NAME', 'GUEST PROG IDS', 'HINTS', 'DIGEST'],
    programs.map((p) => [String(p.handle), p.name, p.prog_ids.join(',') || '-', String(p.hints ?? 0), (p.digest ?? '').slice(0, 16)]));
}

interface SchedInfo {
  policy: string;
  host_cpus: string | null;
  prio?: string;
  prio_max?: number;
  prio_vcpus?: { vcpu: number; boost: number; tasks: { tid: number; rtprio: number }[] }[];
  vcpus: { vcpu: number; tid?: number; cpus: number[]; kind: string; reason: string; tasks: { tid: number; comm: string }[]; applied: boolean }[];
  counters: Record<string, number> | null;
}

export function formatScheduler(s: SchedInfo): string {
  let text = `policy ${s.policy}, host CPUs ${s.host_cpus ?? 'all allowed'}\n`;
  text += table(['VCPU', 'TID', 'CPUS', 'KIND', 'APPLIED', 'TASKS', 'REASON'], s.vcpus.map((v) => [
    String(v.vcpu), v.tid === undefined ? '-' : String(v.tid), compactList(v.cpus), v.kind, v.applied ? 'yes' : 'no',
    v.tasks.map((t) => `${t.tid}(${t.comm})`).join(',') || '-', v.reason,
  ]));
  if (s.prio !== undefined) {
    const rt = (s.prio_vcpus ?? []).filter((v) => v.tasks.length > 0).map((v) => `vCPU ${v.vcpu}: ${v.tasks.map((t) => `${t.tid}@${t.rtprio}`).join(',')}${v.boost ? ` -> SCHED_FIFO ${v.boost}` : ''}`);
    text += `prio ${s.prio} (max ${s.prio_max}); real-time guest tasks: ${rt.length ? rt.join('; ') : 'none'}\n`;
  }
  if (s.counters) text += `hints ${s.counters.hints ?? 0}, pins ${s.counters.pins ?? 0}, unpins ${s.counters.unpins ?? 0}, decisions ${s.counters.decisions ?? 0}, rate-limited ${(s.counters.rateLimited ?? 0) + (s.counters.rateLimitedTask ?? 0)}, apply errors ${s.counters.applyErrors ?? 0}\n`;
  return text;
}

function compactList(cpus: number[]): string {
  const parts: string[] = [];
  for (let i = 0; i < cpus.length;) {
    let j = i;
    while (j + 1 < cpus.length && cpus[j + 1] === cpus[j]! + 1) j++;
    parts.push(j === i ? `${cpus[i]}` : `${cpus[i]}-${cpus[j]}`);
    i = j + 1;
  }
  return parts.join(',') || '-';
}

export function formatPs(vms: VmEntry[]): string {
  if (vms.length === 0) return 'no running VMs\n';
  return table(['ID', 'PID', 'VCPUS', 'STARTED', 'API SOCKET', 'KERNEL'],
    vms.map((v) => [v.id, String(v.pid), v.vcpus === null ? '-' : String(v.vcpus), v.started, v.api_sock ?? '-', v.kernel ?? '-']));
}

export async function cmdBpf(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  const { values, positionals } = parseArgs({
    args: rest, allowPositionals: true, strict: true,
    options: { 'api-sock': { type: 'string' }, json: { type: 'boolean' }, package: { type: 'string' }, elf: { type: 'string' }, 'hint-map': { type: 'string' }, name: { type: 'string' }, flags: { type: 'string' } },
  });
  switch (sub) {
    case 'load': {
      const sources = [positionals.length > 0, values.package !== undefined, values.elf !== undefined].filter(Boolean).length;
      if (sources !== 1 || positionals.length > 1) throw new UsageError('bpf load: give one of: a built-in name (affinity), --package FILE.json, --elf FILE.o');
      let body: Record<string, unknown>;
      if (positionals.length) body = { builtin: positionals[0] };
      else if (values.package !== undefined) {
        let doc: unknown;
        try {
          doc = JSON.parse(readFileSync(values.package, 'utf8'));
        } catch (e) {
          throw new UsageError(`--package ${values.package}: ${(e as Error).message}`);
        }
        body = { package_json: doc };
      } else {
        // The path is opened by the VMM process: make it absolute.
        body = { elf_path: resolve(values.elf!), ...(values['hint-map'] ? { hint_map: values['hint-map'] } : {}), ...(values.name ? { name: values.name } : {}) };
      }
      const r = (await apiJson(socketFor(values['api-sock']), 'PUT', '/bpf/programs', body)) as Program;
      out(values.json ? JSON.stringify(r) + '\n' : `loaded ${r.name} as handle ${r.handle} (guest prog ids ${r.prog_ids.join(', ')})\n`);
      return 0;
    }
    case 'list': {
      const r = (await apiJson(socketFor(values['api-sock']), 'GET', '/bpf/programs')) as { programs: Program[] };
      out(values.json ? JSON.stringify(r) + '\n' : formatPrograms(r.programs));
      return 0;
    }
    case 'unload': {
      if (positionals.length !== 1) throw new UsageError('bpf unload: give the handle (see tsvmm bpf list)');
      await apiJson(socketFor(values['api-sock']), 'DELETE', `/bpf/programs/${encodeURIComponent(positionals[0]!)}`);
      if (!values.json) out(`unloaded handle ${positionals[0]}\n`);
      return 0;
    }
    case 'map-set': {
      if (positionals.length !== 4) throw new UsageError('bpf map-set: give HANDLE MAP KEY VALUE');
      const [handle, map, key, value] = positionals as [string, string, string, string];
      const bytes = (what: string, v: string): unknown => {
        if (v.startsWith('hex:')) return { hex: v.slice(4) };
        if (!/^\d+$/.test(v)) throw new UsageError(`bpf map-set: ${what} '${v}' is neither an integer nor hex:BYTES`);
        return Number(v);
      };
      const body = { key: bytes('KEY', key), value: bytes('VALUE', value), ...(values.flags ? { flags: values.flags } : {}) };
      const r = (await apiJson(socketFor(values['api-sock']), 'PUT', `/bpf/programs/${encodeURIComponent(handle)}/maps/${encodeURIComponent(map)}`, body)) as { key: string; value: string };
      out(values.json ? JSON.stringify(r) + '\n' : `handle ${handle} map ${map}: [${r.key}] = ${r.value}\n`);
      return 0;
    }
    default:
      throw new UsageError(`bpf: unknown subcommand '${sub ?? ''}' (load, list, unload, map-set)`);
  }
}

export async function cmdSched(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  const { values, positionals } = parseArgs({
    args: rest, strict: true, allowPositionals: true,
    options: { 'api-sock': { type: 'string' }, json: { type: 'boolean' }, policy: { type: 'string' }, 'host-cpus': { type: 'string' }, prio: { type: 'string' }, 'prio-max': { type: 'string' } },
  });
  if (positionals.length) throw new UsageError(`sched: unexpected argument '${positionals[0]}'`);
  let r: SchedInfo;
  if (sub === 'show') r = (await apiJson(socketFor(values['api-sock']), 'GET', '/scheduler')) as SchedInfo;
  else if (sub === 'set') {
    if ([values.policy, values['host-cpus'], values.prio, values['prio-max']].every((v) => v === undefined)) throw new UsageError('sched set: give --policy, --host-cpus, --prio and/or --prio-max');
    const prioMax = values['prio-max'] === undefined ? undefined : intArg('--prio-max', values['prio-max']);
    r = (await apiJson(socketFor(values['api-sock']), 'PUT', '/scheduler', { policy: values.policy, host_cpus: values['host-cpus'], prio: values.prio, prio_max: prioMax })) as SchedInfo;
  } else throw new UsageError(`sched: unknown subcommand '${sub ?? ''}' (show, set)`);
  out(values.json ? JSON.stringify(r) + '\n' : formatScheduler(r));
  return 0;
}

function intArg(flag: string, v: string): number {
  if (!/^-?\d+$/.test(v)) throw new UsageError(`${flag} '${v}' is not an integer`);
  return Number(v);
}

interface StreamLine { time?: number; vcpu?: number; source?: number; program?: string; type?: number; name?: string; fields?: Record<string, unknown>; raw?: string; error?: string; lost?: number }

/** One stream line for people: time, vCPU, source program, type, fields (or raw bytes). */
export function formatHintLine(line: string): string {
  let e: StreamLine;
  try {
    e = JSON.parse(line) as StreamLine;
  } catch {
    return `(unparsable line) ${line}`;
  }
  const t = e.time === undefined ? '-' : new Date(e.time).toISOString().slice(11, 23);
  if (e.lost !== undefined) return `${t} ${e.lost} record(s) lost: this reader did not keep up`;
  const src = e.program ? `${e.program}#${e.source}` : 'unattributed';
  const what = e.fields !== undefined && e.fields !== null && typeof e.fields === 'object'
    ? Object.entries(e.fields).filter(([k]) => k !== 'type').map(([k, v]) => `${k}=${Array.isArray(v) ? `[${v.join(',')}]` : String(v)}`).join(' ')
    : `raw=${e.raw ?? ''}${e.error ? ` (${e.error})` : ''}`;
  return `${t} vcpu=${e.vcpu ?? '-'} ${src} ${e.name ?? `type ${e.type}`} ${what}`;
}

export async function cmdHints(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  const { values, positionals } = parseArgs({
    args: rest, strict: true, allowPositionals: true,
    options: { 'api-sock': { type: 'string' }, json: { type: 'boolean' }, type: { type: 'string', multiple: true } },
  });
  const types = (values.type ?? []).flatMap((t) => t.split(','));
  for (const t of types) if (!/^\d+$/.test(t)) throw new UsageError(`--type '${t}' is not a hint type number`);
  const path = `/hints?follow=1${types.length ? `&type=${types.join(',')}` : ''}`;
  const sock = socketFor(values['api-sock']);
  const stop = new AbortController();
  const onSig = () => stop.abort();
  process.once('SIGINT', onSig);
  process.once('SIGTERM', onSig);
  try {
    if (sub === 'watch') {
      if (positionals.length) throw new UsageError(`hints watch: unexpected argument '${positionals[0]}'`);
      await apiStream(sock, path, (l) => out((values.json ? l : formatHintLine(l)) + '\n'), stop.signal);
      return 0;
    }
    if (sub === 'record') {
      if (positionals.length !== 1) throw new UsageError('hints record: give the file to write');
      const file = positionals[0]!;
      const fd = openSync(file, 'a', 0o644);
      let records = 0;
      let lost = 0;
      try {
        process.stderr.write(`recording hints to ${file} (Ctrl-C to stop)\n`);
        await apiStream(sock, path, (l) => {
          writeSync(fd, l + '\n');
          const n = /^\{"time":[^,]*,"lost":(\d+)\}$/.exec(l);
          if (n) lost += Number(n[1]);
          else records++;
        }, stop.signal);
      } finally {
        closeSync(fd);
      }
      process.stderr.write(`recorded ${records} hint record(s) to ${file}${lost ? `; ${lost} lost (the file could not keep up)` : ''}\n`);
      return 0;
    }
    throw new UsageError(`hints: unknown subcommand '${sub ?? ''}' (watch, record)`);
  } finally {
    process.off('SIGINT', onSig);
    process.off('SIGTERM', onSig);
  }
}

interface VcpuRowOut { vcpu: number; tid?: number; sched: { policy: string; priority: number; nice: number } | null; base: { policy: string } | null; boost: { class: { policy: string; priority: number }; reason: string } | null; paused: boolean }

export function formatVcpus(rows: VcpuRowOut[]): string {
  const cls = (c: { policy: string; priority: number; nice: number } | null) => c === null ? '-' : c.policy === 'fifo' || c.policy === 'rr' ? `${c.policy} ${c.priority}` : `${c.policy}${c.nice ? ` nice ${c.nice}` : ''}`;
  return table(['VCPU', 'TID', 'CLASS', 'SET BY', 'STATE', 'BOOST REASON'], rows.map((r) => [
    String(r.vcpu), r.tid === undefined ? '-' : String(r.tid), cls(r.sched), r.boost ? 'prio policy' : r.base ? 'operator' : '-', r.paused ? 'paused' : 'running', r.boost?.reason ?? '-',
  ]));
}

export async function cmdVcpu(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  const { values, positionals } = parseArgs({
    args: rest, strict: true, allowPositionals: true,
    options: { 'api-sock': { type: 'string' }, json: { type: 'boolean' }, policy: { type: 'string' }, priority: { type: 'string' }, nice: { type: 'string' } },
  });
  const sock = () => socketFor(values['api-sock']);
  const one = (): string => {
    if (positionals.length !== 1 || !/^\d+$/.test(positionals[0]!)) throw new UsageError(`vcpu ${sub}: give one vCPU number`);
    return positionals[0]!;
  };
  let row: VcpuRowOut;
  switch (sub) {
    case 'show': {
      const r = (await apiJson(sock(), 'GET', '/vcpus')) as { vcpus: VcpuRowOut[] };
      out(values.json ? JSON.stringify(r) + '\n' : formatVcpus(r.vcpus));
      return 0;
    }
    case 'sched': {
      const v = one();
      if (values.policy === undefined) throw new UsageError('vcpu sched: give --policy other|batch|idle|fifo|rr');
      const body = { policy: values.policy, ...(values.priority === undefined ? {} : { priority: intArg('--priority', values.priority) }), ...(values.nice === undefined ? {} : { nice: intArg('--nice', values.nice) }) };
      row = (await apiJson(sock(), 'PUT', `/vcpus/${v}/sched`, body)) as VcpuRowOut;
      break;
    }
    case 'pause':
    case 'resume':
      row = (await apiJson(sock(), 'PATCH', `/vcpus/${one()}`, { state: sub === 'pause' ? 'Paused' : 'Resumed' })) as VcpuRowOut;
      break;
    default:
      throw new UsageError(`vcpu: unknown subcommand '${sub ?? ''}' (show, sched, pause, resume)`);
  }
  out(values.json ? JSON.stringify(row) + '\n' : formatVcpus([row]));
  return 0;
}

export async function cmdHaltPoll(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, strict: true, allowPositionals: true, options: { 'api-sock': { type: 'string' }, json: { type: 'boolean' } } });
  if (positionals.length > 1) throw new UsageError('halt-poll: at most one value (nanoseconds)');
  const sock = socketFor(values['api-sock']);
  const r = (positionals.length
    ? await apiJson(sock, 'PUT', '/halt-poll', { max_ns: intArg('halt-poll', positionals[0]!) })
    : await apiJson(sock, 'GET', '/halt-poll')) as { max_ns: number | null; source: string };
  out(values.json ? JSON.stringify(r) + '\n' : `halt polling: ${r.max_ns ?? 'unknown'} ns (${r.source === 'tsvmm' ? 'set by tsvmm' : 'kvm module default'})\n`);
  return 0;
}

export async function cmdMetrics(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, strict: true, options: { 'api-sock': { type: 'string' }, prometheus: { type: 'boolean' } } });
  const r = await apiCall(socketFor(values['api-sock']), 'GET', `/metrics${values.prometheus ? '?format=prometheus' : ''}`);
  if (r.status !== 200) throw new ApiClientError(`GET /metrics: ${r.status}: ${r.text.trim()}`, r.status);
  out(r.text.endsWith('\n') ? r.text : r.text + '\n');
  return 0;
}

export async function cmdPs(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, strict: true, options: { json: { type: 'boolean' } } });
  const vms = listVms();
  out(values.json ? JSON.stringify(vms) + '\n' : formatPs(vms));
  return 0;
}
