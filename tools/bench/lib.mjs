// Shared parts of the peer benchmarks (boot.mjs, vsock.mjs): the guest files both VMMs boot,
// the QEMU peer's command line, timed child processes with a hard timeout, statistics and
// the JSON record. Plain Node ESM so the benchmarks run without a build step; reads
// tsvmm's cache and tools/guest/ but never writes outside the files the caller names.
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../..');
export const READY_MARKER = 'tsvmm-init: ready';
// tsvmm's own default (vmm/config.ts DEFAULT_CMDLINE): both VMMs get exactly this plus the
// caller's parameters, so neither boots with a different kernel configuration.
export const BASE_CMDLINE = 'console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd quiet';

export class BenchError extends Error {}

/** `tsvmm.cmd=<base64>`: the default init runs it with sh -c, then powers off (docs/default-guest.md). */
export function guestCmd(cmd) {
  return `tsvmm.cmd=${Buffer.from(cmd, 'utf8').toString('base64')}`;
}

export function cacheDir() {
  return process.env.TSVMM_CACHE || join(process.env.HOME || '/root', '.cache/tsvmm');
}

/** The Debian kernel record written by tools/guest/fetch-kernel.sh. */
export function kernelRecord() {
  const path = join(cacheDir(), 'kernel/kernel.json');
  if (!existsSync(path)) throw new BenchError(`no kernel record at ${path}: run tools/guest/fetch-kernel.sh`);
  return JSON.parse(readFileSync(path, 'utf8'));
}

/**
 * The default guest's kernel (bzImage) and initramfs. The image is asked of
 * build-initramfs.sh, which only checks its hash when nothing changed (inside the sandbox
 * the cache is read-only, so tools/bench/run.sh builds it before entering).
 */
export function guestFiles(opts) {
  const kernel = opts.kernel || kernelRecord().kernel;
  let initrd = opts.initrd;
  if (!initrd) {
    initrd = execFileSync(join(ROOT, 'tools/guest/build-initramfs.sh'), [], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
      .trim().split('\n').pop();
  }
  for (const f of [kernel, initrd]) if (!f || !existsSync(f)) throw new BenchError(`guest file missing: ${f}`);
  return { kernel, initrd };
}

/** A hardware KVM module behind /dev/kvm (kvm_pvm and other software KVMs don't count). */
export function hardwareKvm() {
  return existsSync('/dev/kvm') && (existsSync('/sys/module/kvm_intel') || existsSync('/sys/module/kvm_amd'));
}

export function requireKvm(force) {
  if (hardwareKvm() || force) return;
  throw new BenchError('no hardware KVM here (/dev/kvm missing or a software KVM such as kvm_pvm): ' +
    'run through tools/bench/run.sh, which uses the nested sandbox, or pass --force');
}

export function tsvmmArgs(c) {
  // For looking inside a bench run: TSVMM_BENCH_NODE_FLAGS for tsvmm's node (e.g. "--cpu-prof
  // --cpu-prof-dir=DIR"; NODE_OPTIONS refuses --cpu-prof and would profile the driver too),
  // TSVMM_BENCH_RUN_ARGS for `tsvmm run` (e.g. "--metrics-path FILE"). Space-separated.
  const words = (v) => (v ?? '').split(/\s+/).filter(Boolean);
  const args = [...words(process.env.TSVMM_BENCH_NODE_FLAGS), join(ROOT, 'bin/tsvmm.js'), 'run', '--quiet',
    ...words(process.env.TSVMM_BENCH_RUN_ARGS), '--kernel', c.kernel, '--initrd', c.initrd,
    '--vcpus', String(c.vcpus), '--memory', c.memory, '--cmdline', c.cmdline];
  if (c.vsock) args.push('--vsock', `cid=${c.vsock.cid},uds=${c.vsock.uds}`);
  if (c.drive) args.push('--drive', `path=${c.drive}`);
  return { cmd: process.execPath, args };
}

export function qemuArgs(c) {
  const args = ['-M', 'microvm,acpi=on,rtc=on', '-accel', 'kvm', '-cpu', c.qemuCpu, '-m', c.memory,
    '-smp', String(c.vcpus), '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    '-serial', 'stdio', '-kernel', c.kernel, '-initrd', c.initrd, '-append', c.cmdline];
  if (c.vsock) args.push('-device', `vhost-vsock-device,guest-cid=${c.vsock.cid}`);
  // QEMU's defaults spelled out: the host page cache (cache=writeback) and a thread pool
  // (aio=threads), as tsvmm's pread/pwrite on libuv's pool.
  if (c.drive) args.push('-drive', `id=d0,file=${c.drive},format=raw,if=none,cache=writeback,aio=threads`, '-device', 'virtio-blk-device,drive=d0');
  return { cmd: c.qemu, args };
}

/**
 * Spawns a child and resolves when it exits or the timeout killed it (SIGKILL to its
 * process group, so nothing is left behind). `markers` are line prefixes whose first
 * appearance on stdout is timed from spawn; `onLine` / `onErrLine` see every stdout /
 * stderr line, `onData` every stdout chunk as it comes (with its ms from spawn); aborting
 * `signal` kills the child like the timeout (not counted as one); `onSpawn` gets the child's pid.
 */
export function runTimed(cmd, args, { timeoutMs, markers = [], onLine, onErrLine, onData, env, signal, onSpawn } = {}) {
  return new Promise((resolve) => {
    const t0 = process.hrtime.bigint();
    const ms = () => Number(process.hrtime.bigint() - t0) / 1e6;
    // TSVMM_BENCH_STDIN=PATH (a fifo): the child's stdin, for a diagnosis that types into the
    // guest's console (a byte the guest receives is an interrupt: bench-diag.sh). Else none.
    const stdinPath = process.env.TSVMM_BENCH_STDIN;
    const stdin = stdinPath ? openSync(stdinPath, 'r+') : 'ignore';
    const child = spawn(cmd, args, { stdio: [stdin, 'pipe', 'pipe'], detached: true, env: env ?? process.env });
    if (typeof stdin === 'number') closeSync(stdin);
    if (child.pid !== undefined) onSpawn?.(child.pid);
    const seen = {};
    let partial = '';
    let tail = '';
    let timedOut = false;
    const line = (l) => {
      for (const m of markers) if (seen[m] === undefined && l.startsWith(m)) seen[m] = ms();
      onLine?.(l);
    };
    // Without markers or onLine nobody needs stdout's lines: a long one (a serial bench's
    // megabyte without a newline) would otherwise be re-split with every chunk that extends it.
    const wantLines = markers.length > 0 || onLine !== undefined;
    child.stdout.setEncoding('utf8').on('data', (d) => {
      onData?.(d, ms());
      tail = (tail + d).slice(-4000);
      if (!wantLines) return;
      const lines = (partial + d).split('\n');
      partial = lines.pop() ?? '';
      for (const l of lines) line(l.replace(/\r$/, ''));
    });
    let errPartial = '';
    child.stderr.setEncoding('utf8').on('data', (d) => {
      tail = (tail + d).slice(-4000);
      const lines = (errPartial + d).split('\n');
      errPartial = lines.pop() ?? '';
      for (const l of lines) onErrLine?.(l);
    });
    const kill = () => { try { process.kill(-child.pid, 'SIGKILL'); } catch { /* already gone */ } };
    const timer = setTimeout(() => { timedOut = true; kill(); }, timeoutMs);
    signal?.addEventListener('abort', kill);
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ code: null, signal: null, timedOut, ms: ms(), seen, tail: `cannot run ${cmd}: ${e.message}` });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (partial) line(partial);
      resolve({ code, signal, timedOut, ms: ms(), seen, tail });
    });
  });
}

/**
 * A process's memory from /proc/PID/status in MiB: resident now (rss: anon + file + shmem, each
 * apart) and its peak so far (hwm); null once the process is gone.
 */
export function processMemory(pid) {
  let text;
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return null;
  }
  const kib = (key) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);
  const mib = (key) => Math.round(kib(key) / 1024 * 10) / 10;
  return { rss: mib('VmRSS'), hwm: mib('VmHWM'), anon: mib('RssAnon'), file: mib('RssFile'), shmem: mib('RssShmem') };
}

export function stats(values) {
  const v = [...values].sort((a, b) => a - b);
  if (v.length === 0) return { n: 0, min: null, median: null, max: null };
  const mid = v.length >> 1;
  const median = v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
  return { n: v.length, min: v[0], median, max: v[v.length - 1] };
}

export function ratio(a, b) {
  return a == null || b == null || b === 0 ? null : a / b;
}

/**
 * Ratios within rounds: for every round (a run of each VMM back to back; pooled runs keep their
 * `source` file apart) with both VMMs' runs ok, `ratio(value(tsvmm), value(qemu))`; their stats.
 * Where the machine's speed drifts between rounds (the shared sandbox), this compares runs taken
 * minutes apart, not the medians of runs taken an hour apart.
 */
export function pairedRatios(runs, value) {
  const rounds = new Map();
  for (const r of runs) {
    if (!r.ok) continue;
    const key = `${r.source ?? ''}#${r.round}`;
    rounds.set(key, { ...rounds.get(key), [r.vmm]: r });
  }
  const ratios = [];
  for (const p of rounds.values()) {
    if (!p.tsvmm || !p.qemu) continue;
    const x = ratio(value(p.tsvmm), value(p.qemu));
    if (x != null && Number.isFinite(x)) ratios.push(x);
  }
  return stats(ratios);
}

/**
 * `--pool A.json,B.json`: the runs of earlier result files of `bench` as one set, each run
 * tagged with its file (`source`: pairedRatios keeps their rounds apart), and per file what
 * `describe(data)` says of it beside its name, date and run count.
 */
export function pooledRuns(list, bench, describe = () => ({})) {
  const runs = [];
  const sources = [];
  for (const file of list.split(',').filter(Boolean)) {
    const d = JSON.parse(readFileSync(file, 'utf8'));
    if (d.bench !== bench) throw new BenchError(`${file}: not a ${bench} bench result (bench: ${d.bench})`);
    sources.push({ file, date: d.env?.date ?? null, ...describe(d), runs: d.runs.length });
    for (const r of d.runs) runs.push({ ...r, source: file });
  }
  return { runs, sources };
}

/** The machine this process runs on: what a reader needs to judge numbers taken here. */
export function machine() {
  const read = (p) => { try { return readFileSync(p, 'utf8'); } catch { return ''; } };
  const cores = new Set();
  for (const c of readdirSync('/sys/devices/system/cpu').filter((d) => /^cpu\d+$/.test(d))) {
    const t = `/sys/devices/system/cpu/${c}/topology`;
    cores.add(`${read(`${t}/physical_package_id`).trim()}:${read(`${t}/core_id`).trim()}`);
  }
  return {
    date: new Date().toISOString(),
    os: /^PRETTY_NAME="?([^"\n]*)/m.exec(read('/etc/os-release'))?.[1] ?? 'unknown',
    kernel: release(),
    cpu: cpus()[0]?.model ?? 'unknown',
    cpus: cpus().length,
    cores: cores.size,
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    kvm: ['kvm_intel', 'kvm_amd', 'kvm_pvm'].find((m) => existsSync(`/sys/module/${m}`)) ?? (existsSync('/dev/kvm') ? 'unknown' : 'none'),
    hardwareKvm: hardwareKvm(),
    nestedSandbox: process.env.TSVMM_IN_SANDBOX === '1',
    node: process.version,
    loadavg: loadavg(),
  };
}

/** Facts about where the numbers were taken, so a JSON file explains itself. */
export function environment(qemu) {
  const q = spawnSync(qemu, ['--version'], { encoding: 'utf8' });
  return { ...machine(), qemu: q.status === 0 ? q.stdout.split('\n')[0] : null };
}

export function writeJson(path, data) {
  if (path) writeFileSync(path, JSON.stringify(data, null, 2) + '\n');
}

/** --name value / --flag parsing against a table of defaults (numbers stay numbers). */
export function parseArgs(argv, defaults, usage) {
  const o = { ...defaults };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-h' || a === '--help') { process.stdout.write(usage); process.exit(0); }
    const key = a.startsWith('--') ? a.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase()) : null;
    if (key === null || !(key in defaults)) { process.stderr.write(`unknown argument ${a}\n${usage}`); process.exit(2); }
    if (typeof defaults[key] === 'boolean') { o[key] = true; continue; }
    const v = argv[++i];
    if (v === undefined) { process.stderr.write(`${a} needs a value\n${usage}`); process.exit(2); }
    if (typeof defaults[key] === 'number') {
      o[key] = Number(v);
      if (!Number.isFinite(o[key]) || o[key] < 0) { process.stderr.write(`${a}: not a number: ${v}\n`); process.exit(2); }
    } else o[key] = v;
  }
  return o;
}

export const fmt = (x, d = 1) => (x == null ? '-' : x.toFixed(d));
