#!/usr/bin/env node
// The seed paper's experiment: spscq throughput in a guest under host load {none, low, high}
// × vCPU pinning {none, static, hinted}, N runs per cell. Host load is unpinned busy
// processes, 2 (low) or 8 (high) per host CPU, started after the guest booted and killed
// after the cell. One guest per pin policy serves every load level and run (booting is the
// slow part in the nested sandbox; spscq itself starts fresh each run, and under `hinted` the
// pins follow its threads' pthread_setaffinity_np and are released when they exit). The
// guest has as many vCPUs as the host has CPUs (at least 2); spscq runs pinned to vCPUs 0
// and 1. Output in --out DIR: runs.json (every run), results.md (mean, sd, n), chart.svg/png.
// Owns only its output dir and the load processes it spawns; needs hardware KVM (or the
// nested sandbox: tools/sandbox/run.sh) and dist/bench/paper-run.js (tools/bench/paper-run.ts, built by tools/build.mjs).
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, release } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { ROOT, hardwareKvm } from './lib.mjs';
import { LOADS, PINS, markdownTable, renderChart, summarize } from './paper-report.mjs';

const USAGE = `usage: node tools/bench/paper.mjs [options]
  --runs N          runs per cell (default 5)
  --duration SEC    spscq run time (default 5)
  --loads LIST      host loads, of none,low,high (default all)
  --pins LIST       pin policies, of none,static,hinted (default all)
  --short           the pipeline check: 1 run of 2 s, loads none,high
  --vcpus N         guest vCPUs (default: host CPUs, at least 2)
  --memory SIZE     guest memory (default 512M)
  --out DIR         output dir (default /tmp/tsvmm-paper/<time>)
  --report FILE     only re-render results.md and the chart from a runs.json
  --force           run without a hardware KVM module
Exit status: 0 every run ok, 1 some run failed or the chart could not be drawn, 2 usage.`;
const LOAD_PER_CPU = { none: 0, low: 2, high: 8 };
const log = (m) => process.stderr.write(`paper: ${m}\n`);

function list(v, allowed, flag) {
  const xs = v.split(',').filter(Boolean);
  for (const x of xs) if (!allowed.includes(x)) usage(`${flag} '${x}' is not one of ${allowed.join(',')}`);
  return xs;
}

function usage(msg) {
  process.stderr.write(`paper: ${msg}\n${USAGE}\n`);
  process.exit(2);
}

function positive(v, flag, integer) {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n))) usage(`${flag} '${v}' must be a positive ${integer ? 'integer' : 'number'}`);
  return n;
}

/** Busy loops, unpinned; resolves once each is killed and reaped. */
function startLoad(count) {
  const procs = Array.from({ length: count }, () => spawn('sh', ['-c', 'while :; do :; done'], { stdio: 'ignore' }));
  return async () => {
    await Promise.all(procs.map((p) => new Promise((r) => {
      if (p.exitCode !== null || p.signalCode !== null) return r();
      p.once('exit', r);
      p.kill('SIGKILL');
    })));
  };
}

/**
 * One guest (dist/bench/paper-run.js) for a pin policy; `request` sends one spscq run and awaits
 * its answer. The runner gives up on a boot after timeoutSec itself, with what the guest was
 * doing (its stderr is ours, so it lands in the log); this side waits longer, and when it gives
 * up first it stops the runner with SIGTERM, which also makes it print that diagnosis.
 */
async function bootGuest(pin, vcpus, memory, timeoutSec) {
  const runner = join(ROOT, 'dist/bench/paper-run.js');
  if (!existsSync(runner)) throw new Error(`${runner} missing: run "node tools/build.mjs"`);
  const child = spawn(process.execPath, [runner, '--pin', pin, '--vcpus', String(vcpus), '--memory', memory, '--timeout', String(timeoutSec)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const exited = new Promise((r) => child.once('exit', (code, sig) => r(code ?? sig)));
  const waitSec = timeoutSec + 120;
  const next = async (what) => {
    let timer;
    const timeout = new Promise((r) => (timer = setTimeout(() => r('timeout'), waitSec * 1000)));
    try {
      const r = await Promise.race([lines.next(), timeout]);
      if (r === 'timeout') {
        log(`no answer from the guest (${what}) within ${waitSec} s: stopping its runner (SIGTERM), which prints what the guest was doing`);
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 60_000);
        const status = await exited;
        clearTimeout(t);
        throw new Error(`no answer from the guest (${what}) within ${waitSec} s; its runner then exited (${status})`);
      }
      if (r.done) throw new Error(`the guest runner exited (${await exited}) during ${what}`);
      return JSON.parse(r.value);
    } finally {
      clearTimeout(timer);
    }
  };
  const ready = await next('boot');
  if (!ready.ready) {
    // The runner ends by itself after a failed start; SIGTERM only if it lingers.
    const t = setTimeout(() => child.kill('SIGTERM'), 30_000);
    await exited;
    clearTimeout(t);
    throw new Error(`guest with --pin ${pin} did not start: ${ready.error}`);
  }
  return {
    ready,
    request: (args) => {
      child.stdin.write(`${JSON.stringify({ args })}\n`);
      return next('spscq');
    },
    close: async () => {
      child.stdin.end();
      const t = setTimeout(() => child.kill('SIGTERM'), 60_000);
      await exited;
      clearTimeout(t);
    },
  };
}

function writeReport(dir, record) {
  const rows = summarize(record.runs);
  const env = record.environment;
  const md = [
    `# spscq in a tsvmm guest: host load × vCPU pinning`,
    '',
    `${env.sandbox ? '**Nested sandbox (QEMU TCG with emulated SVM): not representative of real hardware.** ' : ''}` +
      `Host: ${env.hostCpus} CPUs (${env.cpuModel}), kernel ${env.kernel}; guest: ${record.config.vcpus} vCPUs, ${record.config.memory}; ` +
      `spscq ${record.config.duration} s per run, pinned to vCPUs 0 and 1; ${record.config.runs} run(s) per cell; ${record.started}.`,
    '',
    markdownTable(rows),
  ].join('\n');
  writeFileSync(join(dir, 'results.md'), md);
  return { rows, md };
}

async function main() {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string' }, duration: { type: 'string' }, loads: { type: 'string' }, pins: { type: 'string' },
      short: { type: 'boolean' }, vcpus: { type: 'string' }, memory: { type: 'string' }, out: { type: 'string' },
      report: { type: 'string' }, force: { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (values.report) {
    const record = JSON.parse(readFileSync(values.report, 'utf8'));
    const dir = resolve(values.out ?? join(values.report, '..'));
    mkdirSync(dir, { recursive: true });
    const { rows, md } = writeReport(dir, record);
    process.stdout.write(md);
    await renderChart(rows, join(dir, 'chart'), chartTitle(record));
    return 0;
  }
  const short = values.short ?? false;
  const runs = positive(values.runs ?? (short ? '1' : '5'), '--runs', true);
  const duration = positive(values.duration ?? (short ? '2' : '5'), '--duration', false);
  const loads = list(values.loads ?? (short ? 'none,high' : LOADS.join(',')), LOADS, '--loads');
  const pins = list(values.pins ?? PINS.join(','), PINS, '--pins');
  const hostCpus = availableParallelism();
  const vcpus = values.vcpus ? positive(values.vcpus, '--vcpus', true) : Math.max(2, hostCpus);
  if (vcpus < 2) usage('spscq needs at least 2 vCPUs');
  const memory = values.memory ?? '512M';
  const sandbox = process.env.TSVMM_SANDBOX_OUT !== undefined;
  if (!hardwareKvm() && !values.force) {
    log('no hardware KVM here: run inside tools/sandbox/run.sh (see docs/paper.md) or pass --force');
    return 2;
  }
  const dir = resolve(values.out ?? join('/tmp/tsvmm-paper', new Date().toISOString().replace(/[:.]/g, '-')));
  mkdirSync(dir, { recursive: true });
  const record = {
    started: new Date().toISOString(),
    config: { runs, duration, loads, pins, vcpus, memory, loadPerCpu: LOAD_PER_CPU, short },
    environment: { hostCpus, cpuModel: cpus()[0]?.model ?? '?', kernel: release(), node: process.version, sandbox, loadavgBefore: loadavg() },
    guests: [],
    runs: [],
  };
  const save = () => writeFileSync(join(dir, 'runs.json'), `${JSON.stringify(record, null, 1)}\n`);
  const timeoutSec = Math.max(600, duration * 4);
  const args = ['-p', '0', '-c', '1', '-d', String(duration)];
  for (const pin of pins) {
    log(`booting a ${vcpus}-vCPU guest with --pin ${pin}`);
    const guest = await bootGuest(pin, vcpus, memory, timeoutSec);
    record.guests.push(guest.ready);
    log(`guest up in ${guest.ready.bootSeconds.toFixed(1)} s${guest.ready.progIds.length ? `, affinity program ids ${guest.ready.progIds.join(',')}` : ''}`);
    try {
      for (const load of loads) {
        const count = LOAD_PER_CPU[load] * hostCpus;
        const stopLoad = startLoad(count);
        try {
          if (count) await new Promise((r) => setTimeout(r, 1000)); // let the host scheduler spread the load
          for (let i = 0; i < runs; i++) {
            const t0 = Date.now();
            const a = await guest.request(args);
            const run = { pin, load, loadProcs: count, run: i, ok: a.ok === true && a.result?.check === 'ok', mpps: a.result?.mpps ?? null, result: a.result ?? null, placement: a.placement, counters: a.counters, error: a.ok ? undefined : a.error, stderr: a.ok ? undefined : a.stderr, wallSeconds: (Date.now() - t0) / 1000 };
            record.runs.push(run);
            save();
            log(`pin=${pin} load=${load} run ${i + 1}/${runs}: ${run.ok ? `${run.mpps} Mpps` : `FAILED ${run.error}`}`);
          }
        } finally {
          await stopLoad();
        }
      }
    } finally {
      await guest.close();
    }
  }
  record.finished = new Date().toISOString();
  save();
  const { rows, md } = writeReport(dir, record);
  process.stdout.write(md);
  let status = record.runs.every((r) => r.ok) ? 0 : 1;
  try {
    const c = await renderChart(rows, join(dir, 'chart'), chartTitle(record));
    log(`chart: ${c.svg}, ${c.png}`);
  } catch (e) {
    log(e.message);
    status = 1;
  }
  log(`every run: ${join(dir, 'runs.json')}; table: ${join(dir, 'results.md')}`);
  return status;
}

function chartTitle(record) {
  const e = record.environment;
  return `spscq in a tsvmm guest (${record.config.vcpus} vCPUs, ${e.hostCpus} host CPUs${e.sandbox ? ', nested sandbox' : ''}), n=${record.config.runs}`;
}

main().then((code) => process.exit(code), (e) => {
  log(`error: ${e.message}`);
  process.exit(1);
});
