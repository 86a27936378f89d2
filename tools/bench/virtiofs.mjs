#!/usr/bin/env node
// virtio-fs against QEMU: the same virtiofsd binary serves the same directory to tsvmm
// (`--share`) and to QEMU microvm (vhost-user-fs-device on memfd RAM); the default guest's init
// mounts it (tsvmm.share=) and times, from /proc/uptime, a sequential read of one large file
// and a metadata walk (ls -lR: one stat per file) over many small ones, each on a fresh boot
// (cold guest cache; the host's page cache is warm for both). Ratios are QEMU's time over
// tsvmm's (≥ 1: tsvmm as fast). Needs hardware KVM: run it through tools/bench/run.sh.
//
// The JSON (--out) is rewritten after every finished boot, so a job cut short keeps what it
// measured; --pool reports the runs of several such files as one.
//
//   node tools/bench/virtiofs.mjs [--runs 3] [--files 10000] [--big-mib 128] [--out FILE]
//   node tools/bench/virtiofs.mjs --pool A.json,B.json [--out FILE]
import { spawn } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  BASE_CMDLINE, BenchError, ROOT, environment, fmt, guestCmd, guestFiles, pairedRatios, parseArgs, pooledRuns, qemuArgs, ratio, requireKvm, runTimed, stats,
  writeJson,
} from './lib.mjs';

const USAGE = `usage: node tools/bench/virtiofs.mjs [options]
  --runs N        timed boots per VMM, alternating (default 3)
  --files N       small files for the metadata walk (default 10000)
  --big-mib N     size of the sequentially read file (default 128)
  --memory SIZE   (default 512M)   --timeout SEC (default 600)   --out FILE
  --virtiofsd BIN (default: what tsvmm finds)   --qemu BIN   --qemu-cpu MODEL (default host)
  --force         run even without a hardware KVM module
  --only VMM      tsvmm or qemu
  --qemu-queue-size N  QEMU's request queue size (default 0: QEMU's own, 128; tsvmm's is 1024)
  --pool A,B,...  run nothing: report the runs of these JSON files (earlier --out) together`;

const o = parseArgs(process.argv.slice(2), {
  runs: 3, files: 10000, bigMib: 128, memory: '512M', timeout: 600, out: '', virtiofsd: '', qemu: 'qemu-system-x86_64', qemuCpu: 'host', force: false,
  kernel: '', initrd: '', pool: '', only: '', qemuQueueSize: 0,
}, USAGE);

const LINE = 'bench-vfs:';
const MARK = 'bench-vfs-mark:';
const DIAG = 'bench-vfs-diag:';
// Times in 10 ms ticks of /proc/uptime, printed as ms. The marks around the read let a profiler
// outside look at the read alone (TSVMM_BENCH_PERF_CTL); the diag line says what the guest saw
// (its virtio interrupts, the share's readahead, the page cache afterwards), outside the timing.
const SCRIPT = `
t() { read u _ < /proc/uptime; echo \${u%.*}\${u#*.}0; }
echo "${MARK} read-start"; a=$(t); cat /mnt/b/big > /dev/null; b=$(t); echo "${MARK} read-end"
ls -lR /mnt/b/many > /dev/null; c=$(t)
n=$(ls /mnt/b/many | wc -l)
echo "${LINE} read_ms=$((b - a)) stat_ms=$((c - b)) files=$n"
echo "${DIAG} irqs=[$(grep -h virtio /proc/interrupts | tr -s ' ' | tr '\\n' '|')] ra_kb=[$(cat /sys/class/bdi/0:*/read_ahead_kb 2>/dev/null | tr '\\n' ' ')] $(grep -E '^(Cached|MemFree):' /proc/meminfo | tr -s ' ' | tr '\\n' ' ')"`;

function makeTree(dir) {
  mkdirSync(join(dir, 'many'), { recursive: true });
  const chunk = Buffer.alloc(1 << 20, 0x5a);
  const fd = [];
  for (let i = 0; i < o.bigMib; i++) fd.push(chunk);
  writeFileSync(join(dir, 'big'), Buffer.concat(fd));
  const small = Buffer.alloc(4096, 0x33);
  for (let i = 0; i < o.files; i++) writeFileSync(join(dir, 'many', `f${i}`), small);
}

/** The daemon tsvmm would pick (devices/virtio/fs/daemon.ts), so both VMMs run the same binary. */
function findDaemon() {
  if (o.virtiofsd) return o.virtiofsd;
  const dirs = (process.env.PATH ?? '').split(':').filter(Boolean).map((d) => join(d, 'virtiofsd'));
  for (const p of [...dirs, '/usr/libexec/virtiofsd', '/usr/lib/qemu/virtiofsd', '/usr/local/libexec/virtiofsd']) if (existsSync(p)) return p;
  throw new BenchError('virtiofsd not found: --virtiofsd BIN');
}

async function qemuRun(base, dir, daemon, cmdline) {
  const sock = join(base, 'q.sock');
  const d = spawn(daemon, [`--socket-path=${sock}`, '-o', `source=${dir}`, '-o', 'cache=auto', '-o', 'sandbox=chroot', '-o', 'log_level=err'], { stdio: ['ignore', 'ignore', 'pipe'] });
  // The daemon's own words go into a failed run's tail (QEMU only says the socket closed).
  let daemonErr = '';
  d.stderr.on('data', (b) => (daemonErr = (daemonErr + b).slice(-1000)));
  let daemonExit = '';
  d.on('exit', (code, sig) => (daemonExit = `virtiofsd exited (${sig ?? code})`));
  try {
    for (let i = 0; i < 500 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 20));
    const q = qemuArgs({ kernel: o.kernel, initrd: o.initrd, cmdline, vcpus: 1, memory: o.memory, qemu: o.qemu, qemuCpu: o.qemuCpu });
    const m = q.args.indexOf('-M');
    q.args[m + 1] += ',memory-backend=mem';
    // microvm's virtio-mmio transports are legacy (version 1) unless told otherwise, and
    // libvhost-user (virtiofsd) refuses legacy devices at SET_FEATURES.
    q.args.push('-global', 'virtio-mmio.force-legacy=false', '-object', `memory-backend-memfd,id=mem,size=${o.memory},share=on`,
      '-chardev', `socket,id=vfs,path=${sock}`, '-device', `vhost-user-fs-device,chardev=vfs,tag=bench${o.qemuQueueSize ? `,queue-size=${o.qemuQueueSize}` : ''}`);
    const r = await runGuest(q.cmd, q.args);
    if (!r.ok) r.tail += `\n${daemonExit || 'virtiofsd still running'}; its stderr: ${daemonErr || '(nothing)'}`;
    return r;
  } finally {
    d.kill('SIGKILL');
    rmSync(sock, { force: true });
  }
}

// A `perf record --control fifo:PATH -D -1` around the bench (virtiofs-diag.sh): enabled for the
// guest's read only.
const perfCtl = process.env.TSVMM_BENCH_PERF_CTL;

async function runGuest(cmd, args, env) {
  let result = null;
  let diag = null;
  const r = await runTimed(cmd, args, {
    timeoutMs: o.timeout * 1000, env,
    onLine: (l) => {
      const m = new RegExp(`${LINE} read_ms=(\\d+) stat_ms=(\\d+) files=(\\d+)`).exec(l);
      if (m) result = { readMs: Number(m[1]), statMs: Number(m[2]), files: Number(m[3]) };
      if (l.startsWith(DIAG)) diag = l.slice(DIAG.length).trim();
      if (perfCtl && l.startsWith(MARK)) appendFileSync(perfCtl, l.includes('read-start') ? 'enable\n' : 'disable\n');
    },
  });
  if (!result || result.files !== o.files) return { ok: false, error: r.timedOut ? 'timeout' : `exit ${r.code}, no result line`, tail: r.tail.slice(-1500) };
  return { ok: true, ...result, wallMs: r.ms, guest: diag };
}

/** Medians per VMM over the successful runs, and QEMU's time over tsvmm's (tsvmm's relative speed, goal >= 0.9). */
function summarize(runs) {
  const summary = {};
  for (const vmm of ['tsvmm', 'qemu']) {
    const ok = runs.filter((r) => r.vmm === vmm && r.ok);
    summary[vmm] = { ok: ok.length, runs: runs.filter((r) => r.vmm === vmm).length, readMs: stats(ok.map((r) => r.readMs)), statMs: stats(ok.map((r) => r.statMs)) };
  }
  const ratios = {
    read: ratio(summary.qemu.readMs.median, summary.tsvmm.readMs.median),
    stat: ratio(summary.qemu.statMs.median, summary.tsvmm.statMs.median),
  };
  // Within each round, QEMU's time over tsvmm's (pairedRatios divides tsvmm's value by QEMU's: give it speeds).
  const paired = { read: pairedRatios(runs, (r) => 1 / r.readMs), stat: pairedRatios(runs, (r) => 1 / r.statMs) };
  return { summary, ratios, paired };
}

function print(title, { summary, ratios, paired }) {
  console.log(title);
  const mm = (s) => `${fmt(s.median, 0).padStart(7)} (${fmt(s.min, 0)}..${fmt(s.max, 0)})`;
  for (const vmm of ['tsvmm', 'qemu'].filter((n) => summary[n].runs > 0)) console.log(`${vmm.padEnd(6)} ok ${summary[vmm].ok}/${summary[vmm].runs}  read ${mm(summary[vmm].readMs)}  stat ${mm(summary[vmm].statMs)}`);
  console.log(`tsvmm speed vs qemu (qemu ms / tsvmm ms): read ${fmt(ratios.read, 2)}, stat ${fmt(ratios.stat, 2)} (goal >= 0.9)`);
  const pr = (p) => `${fmt(p.median, 2)} (${fmt(p.min, 2)}..${fmt(p.max, 2)})`;
  if (paired.read.n) console.log(`within rounds, median (min..max) of ${paired.read.n}: read ${pr(paired.read)}, stat ${pr(paired.stat)}`);
}

/** --pool: the runs of earlier JSON files as one set (each keeps its file's name). */
function pool() {
  const { runs, sources } = pooledRuns(o.pool, 'virtiofs', ({ config: { files, bigMib, memory } }) => ({ files, bigMib, memory }));
  const sizes = new Set(sources.map((s) => `${s.files} files, ${s.bigMib} MiB`));
  if (sizes.size > 1) throw new BenchError(`--pool: the files measured different sizes (${[...sizes].join('; ')})`);
  const s = summarize(runs);
  print(`virtio-fs, pooled from ${sources.length} files (${[...sizes][0]}; ms, median (min..max))`, s);
  writeJson(o.out, { bench: 'virtiofs', pooled: sources, summary: s.summary, ratio: s.ratios, pairedRatio: s.paired, runs });
}

async function main() {
  if (o.pool) return pool();
  requireKvm(o.force);
  Object.assign(o, guestFiles(o));
  const daemon = findDaemon();
  const base = mkdtempSync(join(tmpdir(), 'tsvmm-bench-vfs-'));
  const dir = join(base, 'tree');
  try {
    makeTree(dir);
    // tsvmm adds its own tsvmm.share= word for --share; QEMU's guest gets the same word by hand.
    const cmdline = `${BASE_CMDLINE} ${guestCmd(SCRIPT)}`;
    const vmms = {
      tsvmm: () => runGuest(process.execPath, [join(ROOT, 'bin/tsvmm.js'), 'run', '--quiet', '--kernel', o.kernel, '--initrd', o.initrd,
        '--memory', o.memory, '--share', `${dir}:/mnt/b,ro`, '--cmdline', cmdline], { ...process.env, TSVMM_VIRTIOFSD: daemon }),
      qemu: () => qemuRun(base, dir, daemon, `${cmdline} tsvmm.share=bench:/mnt/b:ro`),
    };
    const env = environment(o.qemu);
    if (o.only && !(o.only in vmms)) throw new BenchError(`--only: unknown VMM ${o.only}`);
    const names = o.only ? [o.only] : ['tsvmm', 'qemu'];
    const runs = [];
    for (let i = 0; i < o.runs; i++) {
      for (const vmm of i % 2 ? [...names].reverse() : names) {
        const r = { vmm, round: i, at: new Date().toISOString(), ...(await vmms[vmm]()) };
        runs.push(r);
        process.stderr.write(`virtiofs: run ${i + 1}/${o.runs} ${vmm}: ${r.ok ? `read ${r.readMs} ms, stat ${r.statMs} ms` : `FAILED (${r.error})\n${r.tail}`}\n`);
        // Every finished boot is on disk at once: a job cut short keeps what it measured.
        const s = summarize(runs);
        writeJson(o.out, { bench: 'virtiofs', env, config: { ...o, daemon }, complete: runs.length === names.length * o.runs, summary: s.summary, ratio: s.ratios, pairedRatio: s.paired, runs });
      }
    }
    const s = summarize(runs);
    print(`virtio-fs, same virtiofsd (${daemon}), ${o.runs} boots each: sequential read of ${o.bigMib} MiB, ls -lR of ${o.files} files (ms, median (min..max))`, s);
    process.exitCode = names.every((n) => s.summary[n].ok) ? 0 : 1;
  } finally {
    rmSync(base, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(`virtiofs: ${e instanceof BenchError ? e.message : e.stack}\n`);
  process.exitCode = e instanceof BenchError ? 2 : 1;
});
