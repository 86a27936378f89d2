#!/usr/bin/env node
// One report of tsvmm against its peers: runs the boot, exec, vsock, virtio-blk, virtio-fs,
// serial, exit-rate, hint and guest real-time latency (prio) benchmarks
// one after the other (each as its own process, its JSON and log kept in --out), then writes
// report.json (the machine, every benchmark's full JSON, the metrics), report.md and the
// charts relative.svg/png and values.svg/png (report-render.mjs). A benchmark that fails is
// reported as failed and the others still run. Owns only its output dir; needs hardware KVM
// or the nested sandbox — tools/bench/report (tools/bench/run.sh report) picks for you.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { BenchError, ROOT, environment, parseArgs, requireKvm, runTimed } from './lib.mjs';
import { BENCHES, markdown, renderCharts, reportMetrics } from './report-render.mjs';

const USAGE = `usage: node tools/bench/report.mjs [options]   (tools/bench/report uses the sandbox where needed)
  --out DIR        output dir (default /tmp/tsvmm-report/<time>)
  --only LIST      benchmarks, of ${BENCHES.join(',')} (default all)
  --skip LIST      benchmarks to leave out (e.g. --skip prio: two more guest boots per run)
  --runs N         boot, exec, vsock and exit-rate runs per VMM (default 5)
  --warmup N       untimed boot runs per VMM (default 1)
  --mib N          vsock stream size each way (default 64)   --echo-mib N  vsock echo size (default 8)
  --blk-small-mib N, --blk-large-mib N   virtio-blk: MiB moved in 4 KiB and in 1 MiB blocks (default 16, 128)
  --fs-files N, --fs-mib N               virtio-fs: files walked, MiB read (default 10000, 128)
  --serial-bytes N bytes the guest writes to ttyS0 (default 1048576)
  --samples N      hint latency samples (default 20)   --flood N  taskset calls in the flood (default 2000)
  --rt-samples N   guest real-time wake-ups per prio run (default 2000), one every --rt-interval US (default 1000);
                   prio boots 2 × --runs guests (--prio none and hinted alternating)
  --short          the pipeline check: 1 run, no warm-up, 2 MiB of vsock each way and echoed, 3 samples, a flood of 100, 200 wake-ups,
                   small disks, shares and serial writes
  --timeout SEC    give up on one benchmark after SEC seconds (default 7200)
  --initrd PATH    the default guest image (default: built or checked by tools/guest/build-initramfs.sh)
  --render DIR     only rewrite report.md and the charts from DIR/report.json
  --force          run without a hardware KVM module
Exit status: 0 every benchmark ran and the charts were drawn, 1 otherwise, 2 usage.
`;

const o = parseArgs(process.argv.slice(2), {
  out: '', only: '', skip: '', runs: 5, warmup: 1, mib: 64, echoMib: 8, samples: 20, flood: 2000, rtSamples: 2000, rtInterval: 1000, short: false, timeout: 7200, initrd: '', render: '', force: false,
  blkSmallMib: 16, blkLargeMib: 128, fsFiles: 10000, fsMib: 128, serialBytes: 1048576,
}, USAGE);
const log = (m) => process.stderr.write(`report: ${m}\n`);

/** The command line of one benchmark, writing its JSON to `json`. */
function command(bench, json) {
  const node = process.execPath;
  const guest = o.initrd ? ['--initrd', o.initrd] : [];
  const force = o.force ? ['--force'] : [];
  switch (bench) {
    case 'boot': return [node, join(ROOT, 'tools/bench/boot.mjs'), '--runs', String(o.runs), '--warmup', String(o.warmup), ...guest, ...force, '--out', json];
    case 'exec': return [node, join(ROOT, 'tools/bench/exec.mjs'), '--runs', String(o.runs), '--warmup', String(o.warmup), ...guest, ...force, '--out', json];
    case 'vsock': return [node, join(ROOT, 'tools/bench/vsock.mjs'), '--runs', String(o.runs), '--mib', String(o.mib), '--echo-mib', String(o.echoMib), ...guest, ...force, '--out', json];
    case 'blk': return [node, join(ROOT, 'tools/bench/blk.mjs'), '--runs', String(o.runs), '--small-mib', String(o.blkSmallMib), '--large-mib', String(o.blkLargeMib), ...guest, ...force, '--out', json];
    case 'virtiofs': return [node, join(ROOT, 'tools/bench/virtiofs.mjs'), '--runs', String(o.runs), '--files', String(o.fsFiles), '--big-mib', String(o.fsMib), ...guest, ...force, '--out', json];
    case 'serial': return [node, join(ROOT, 'tools/bench/serial.mjs'), '--runs', String(o.runs), '--bytes', String(o.serialBytes), ...guest, ...force, '--out', json];
    case 'exits': return [node, join(ROOT, 'dist/bench/exits.js'), '--runs', String(o.runs), '--out', json];
    case 'hints': return [node, join(ROOT, 'dist/bench/hints.js'), '--samples', String(o.samples), '--flood', String(o.flood), '--out', json];
    case 'prio': return [node, join(ROOT, 'dist/bench/prio.js'), '--runs', String(o.runs), '--samples', String(o.rtSamples), '--interval', String(o.rtInterval), ...guest, '--out', json];
  }
  throw new BenchError(`unknown benchmark ${bench}`);
}

async function runBench(bench, dir) {
  const json = join(dir, `${bench}.json`);
  const cmd = command(bench, json);
  const logLines = [];
  const echo = (l) => { logLines.push(l); process.stderr.write(`  ${bench}: ${l}\n`); };
  log(`${bench}: ${cmd.slice(1).join(' ')}`);
  const r = await runTimed(cmd[0], cmd.slice(1), { timeoutMs: o.timeout * 1000, onLine: echo, onErrLine: echo });
  writeFileSync(join(dir, `${bench}.log`), logLines.join('\n') + '\n');
  let result = null;
  try { result = JSON.parse(readFileSync(json, 'utf8')); } catch { /* reported below */ }
  let error = null;
  if (r.timedOut) error = `timed out after ${o.timeout} s`;
  else if (r.code !== 0) error = `exit status ${r.code ?? r.signal}`;
  else if (!result) error = `no JSON in ${json}`;
  return { command: cmd.map((a) => a.replace(`${ROOT}/`, '')), status: error ? 'failed' : 'ok', error, exitCode: r.code, seconds: r.ms / 1000, result };
}

/** report.md and the charts from a report record; false if the charts could not be drawn. */
async function render(record, dir) {
  const metrics = reportMetrics(record);
  writeFileSync(join(dir, 'report.md'), markdown(record, metrics));
  try {
    await renderCharts(record, metrics, dir);
    return true;
  } catch (e) {
    log(e.message);
    return false;
  }
}

async function main() {
  if (o.render) {
    const dir = resolve(o.render);
    const record = JSON.parse(readFileSync(join(dir, 'report.json'), 'utf8'));
    return (await render(record, dir)) ? 0 : 1;
  }
  if (o.short) Object.assign(o, { runs: 1, warmup: 0, mib: 2, echoMib: 2, samples: 3, flood: 100, rtSamples: 200, blkSmallMib: 1, blkLargeMib: 8, fsFiles: 100, fsMib: 4, serialBytes: 4096 });
  const skip = o.skip ? o.skip.split(',') : [];
  for (const b of skip) if (!BENCHES.includes(b)) throw new BenchError(`--skip: '${b}' is not one of ${BENCHES.join(',')}`);
  const benches = (o.only ? o.only.split(',') : BENCHES).filter((b) => !skip.includes(b));
  for (const b of benches) if (!BENCHES.includes(b)) throw new BenchError(`--only: '${b}' is not one of ${BENCHES.join(',')}`);
  requireKvm(o.force);
  const dir = resolve(o.out || join('/tmp/tsvmm-report', new Date().toISOString().replace(/[:.]/g, '-')));
  mkdirSync(dir, { recursive: true });
  if (benches.some((b) => b === 'exits' || b === 'hints' || b === 'prio') && !existsSync(join(ROOT, 'dist/bench/prio.js'))) {
    throw new BenchError('dist/bench/ missing: run `node tools/build.mjs`');
  }
  const machine = environment('qemu-system-x86_64');
  const record = {
    started: new Date().toISOString(),
    config: {
      benches, runs: o.runs, warmup: o.warmup, mib: o.mib, echoMib: o.echoMib, samples: o.samples, flood: o.flood, rtSamples: o.rtSamples, rtInterval: o.rtInterval,
      blkSmallMib: o.blkSmallMib, blkLargeMib: o.blkLargeMib, fsFiles: o.fsFiles, fsMib: o.fsMib, serialBytes: o.serialBytes, short: o.short,
    },
    machine,
    // Inside the sandbox the VMMs see an emulated machine; tools/bench/run.sh names the real one.
    host: machine.nestedSandbox && process.env.TSVMM_BENCH_HOST ? JSON.parse(process.env.TSVMM_BENCH_HOST) : null,
    benches: {},
  };
  const save = () => writeFileSync(join(dir, 'report.json'), `${JSON.stringify({ ...record, metrics: reportMetrics(record) }, null, 1)}\n`);
  for (const b of benches) {
    record.benches[b] = await runBench(b, dir);
    log(`${b}: ${record.benches[b].status}${record.benches[b].error ? ` (${record.benches[b].error})` : ''} in ${record.benches[b].seconds.toFixed(0)} s`);
    save();
  }
  record.finished = new Date().toISOString();
  save();
  const charts = await render(record, dir);
  process.stdout.write(readFileSync(join(dir, 'report.md'), 'utf8'));
  log(`report: ${join(dir, 'report.md')}, ${join(dir, 'report.json')}, charts ${charts ? 'relative.svg/png values.svg/png' : 'NOT drawn'}`);
  return charts && benches.every((b) => record.benches[b].status === 'ok') ? 0 : 1;
}

main().then((code) => { process.exitCode = code; }, (e) => {
  log(e instanceof BenchError ? e.message : e.stack);
  process.exitCode = e instanceof BenchError ? 2 : 1;
});
