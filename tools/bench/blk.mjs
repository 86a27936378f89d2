#!/usr/bin/env node
// virtio-blk throughput, tsvmm against QEMU: sequential read and write of a raw image with
// O_DIRECT in the guest (busybox dd iflag=direct / oflag=direct on /dev/vda, so the guest's
// page cache is out of the way and every block is a virtio request), 4 KiB and 1 MiB blocks.
// Both VMMs boot the same kernel, initramfs and command line, and get the same image file:
// tsvmm `--drive path=IMG`, QEMU microvm `-device virtio-blk-device` with cache=writeback and
// aio=threads (the host page cache and a thread pool, as tsvmm). The guest times each dd with
// /proc/uptime (10 ms ticks: transfers are sized to take seconds). MiB/s per case, median of
// the runs, ratio tsvmm/qemu (goal >= 0.8). Owns nothing but its output and a temp dir; needs
// hardware KVM, i.e. run it through tools/bench/run.sh blk.
//
// The JSON (--out) is rewritten after every finished boot, so a job the sandbox's time limit
// cuts short keeps what it measured; --pool reads the runs of several such files (jobs short
// enough for a shared sandbox) and reports them as one.
//
//   node tools/bench/blk.mjs [--small-mib 16] [--large-mib 128] [--runs 3] [--out FILE] [--only tsvmm|qemu]
//   node tools/bench/blk.mjs --pool A.json,B.json [--out FILE]
import { mkdtempSync, rmSync, openSync, writeSync, closeSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  BASE_CMDLINE, BenchError, READY_MARKER, environment, fmt, guestCmd, guestFiles, parseArgs, pooledRuns, qemuArgs, pairedRatios, ratio, requireKvm, runTimed,
  stats,
  tsvmmArgs, writeJson,
} from './lib.mjs';

const USAGE = `usage: node tools/bench/blk.mjs [options]
  --small-mib N   MiB moved with 4 KiB blocks, each way (default 16)
  --large-mib N   MiB moved with 1 MiB blocks, each way (default 128; the image is this large)
  --runs N        runs per VMM, alternating (default 3)
  --vcpus N       (default 2)    --memory SIZE (default 512M)
  --timeout SEC   kill a run after SEC seconds: failed (default 600)
  --out FILE      write every run as JSON
  --kernel PATH   --initrd PATH   --qemu BIN   --qemu-cpu MODEL (default host)
  --only VMM      tsvmm or qemu
  --force         run even without a hardware KVM module
  --pool A,B,...  run nothing: report the runs of these JSON files (earlier --out) together
`;
const o = parseArgs(process.argv.slice(2), {
  smallMib: 16, largeMib: 128, runs: 3, vcpus: 2, memory: '512M', timeout: 600, out: '', kernel: '', initrd: '',
  qemu: 'qemu-system-x86_64', qemuCpu: 'host', only: '', force: false, pool: '',
}, USAGE);


const CASES = [
  { op: 'read', bs: 4096 }, { op: 'read', bs: 1 << 20 },
  { op: 'write', bs: 4096 }, { op: 'write', bs: 1 << 20 },
];
const LINE = /^blk-bench: op=(read|write) bs=(\d+) bytes=(\d+) start=([\d.]+) end=([\d.]+) rc=(\d+)/;

function guestScript() {
  const lines = ['t() { read up _ </proc/uptime; echo $up; }'];
  for (const c of CASES) {
    const count = Math.floor(((c.bs === 4096 ? o.smallMib : o.largeMib) * 1048576) / c.bs);
    const dd = c.op === 'read'
      ? `dd if=/dev/vda of=/dev/null bs=${c.bs} count=${count} iflag=direct`
      : `dd if=/dev/zero of=/dev/vda bs=${c.bs} count=${count} oflag=direct`;
    lines.push(`a=$(t); ${dd} 2>/dev/null; rc=$?; b=$(t); echo "blk-bench: op=${c.op} bs=${c.bs} bytes=${count * c.bs} start=$a end=$b rc=$rc"`);
  }
  return lines.join('\n');
}

async function oneRun(vmm, conf) {
  const lines = [];
  const { cmd, args } = (vmm === 'tsvmm' ? tsvmmArgs : qemuArgs)({ ...conf, cmdline: `${BASE_CMDLINE} ${guestCmd(guestScript())}` });
  const v = await runTimed(cmd, args, { timeoutMs: o.timeout * 1000, markers: [READY_MARKER], onLine: (l) => lines.push(l) });
  const results = {};
  const errors = [];
  for (const l of lines) {
    const m = LINE.exec(l.trim());
    if (!m) continue;
    const secs = Number(m[5]) - Number(m[4]);
    const key = `${m[1]}-${m[2] === '4096' ? '4k' : '1m'}`;
    if (m[6] !== '0') errors.push(`${key}: dd exit ${m[6]}`);
    results[key] = secs > 0 ? Number(m[3]) / 1048576 / secs : null;
  }
  if (v.timedOut) errors.push(`timeout after ${o.timeout} s`);
  for (const c of CASES) if (!(`${c.op}-${c.bs === 4096 ? '4k' : '1m'}` in results)) errors.push(`no result for ${c.op} bs=${c.bs}`);
  const run = { vmm, ok: errors.length === 0, error: errors.join('; ') || null, bootMs: v.seen[READY_MARKER] ?? null, exitMs: v.ms, mibS: results };
  if (!run.ok) run.outputTail = v.tail.slice(-2000);
  return run;
}

const KEYS = CASES.map((c) => `${c.op}-${c.bs === 4096 ? '4k' : '1m'}`);
// Two decimals below 10 MiB/s: 4 KiB transfers in the nested sandbox run at tenths of a MiB/s.
const f = (x) => fmt(x, x != null && x < 10 ? 2 : 1);

/** Medians (min..max) per VMM and case over the successful runs, and tsvmm/qemu. */
function summarize(runs, names) {
  const summary = {};
  for (const vmm of names) {
    const ok = runs.filter((r) => r.vmm === vmm && r.ok);
    summary[vmm] = { ok: ok.length, failed: runs.filter((r) => r.vmm === vmm).length - ok.length };
    for (const k of KEYS) summary[vmm][k] = stats(ok.map((r) => r.mibS[k]).filter((x) => x != null));
  }
  const ratios = summary.tsvmm && summary.qemu ? Object.fromEntries(KEYS.map((k) => [k, ratio(summary.tsvmm[k].median, summary.qemu[k].median)])) : null;
  const paired = ratios ? Object.fromEntries(KEYS.map((k) => [k, pairedRatios(runs, (r) => r.mibS[k])])) : null;
  return { summary, ratios, paired };
}

function print(title, names, { summary, ratios, paired }) {
  console.log(title);
  console.log(`vmm     ok/runs   ${KEYS.map((k) => `${k} median (min..max)`.padEnd(30)).join('')}`);
  for (const vmm of names) {
    const s = summary[vmm];
    console.log(`${vmm.padEnd(7)} ${`${s.ok}/${s.ok + s.failed}`.padStart(7)}   ${KEYS.map((k) => `${f(s[k].median)} (${f(s[k].min)}..${f(s[k].max)})`.padEnd(30)).join('')}`);
  }
  if (ratios) console.log(`tsvmm/qemu (median): ${KEYS.map((k) => `${k} ${fmt(ratios[k], 2)}`).join(', ')} (goal >= 0.8)`);
  if (paired) console.log(`tsvmm/qemu within rounds, median (min..max) of ${paired[KEYS[0]].n}: ${KEYS.map((k) => `${k} ${fmt(paired[k].median, 2)} (${fmt(paired[k].min, 2)}..${fmt(paired[k].max, 2)})`).join(', ')}`);
}

/** --pool: the runs of earlier JSON files as one set (each keeps its file's name and config). */
function pool() {
  const { runs, sources } = pooledRuns(o.pool, 'blk', (d) => ({ config: d.config }));
  const names = ['tsvmm', 'qemu'].filter((n) => runs.some((r) => r.vmm === n));
  const s = summarize(runs, names);
  print(`virtio-blk sequential, O_DIRECT in the guest (MiB/s), pooled from ${sources.length} files: ${names.map((n) => `${n} ${s.summary[n].ok} ok`).join(', ')}`, names, s);
  writeJson(o.out, { bench: 'blk', pooled: sources, summary: s.summary, ratio: s.ratios, pairedRatio: s.paired, runs });
}

async function main() {
  if (o.pool) return pool();
  requireKvm(o.force);
  const { kernel, initrd } = guestFiles(o);
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-blk-bench-'));
  const image = join(dir, 'disk.img');
  try {
    // Real data (not a sparse file: reading holes costs the host nothing), the same file for both.
    const fd = openSync(image, 'w');
    const chunk = Buffer.alloc(1 << 20);
    for (let i = 0; i < Math.max(o.largeMib, o.smallMib); i++) writeSync(fd, randomFillSync(chunk));
    closeSync(fd);
    const conf = { kernel, initrd, vcpus: o.vcpus, memory: o.memory, qemu: o.qemu, qemuCpu: o.qemuCpu, drive: image };
    const names = o.only ? [o.only] : ['tsvmm', 'qemu'];
    for (const n of names) if (n !== 'tsvmm' && n !== 'qemu') throw new BenchError(`--only: unknown VMM ${n}`);
    const env = environment(o.qemu);
    const config = { smallMib: o.smallMib, largeMib: o.largeMib, runs: o.runs, vcpus: o.vcpus, memory: o.memory, timeoutSec: o.timeout, kernel, initrd, qemuDrive: 'cache=writeback,aio=threads' };
    const runs = [];
    for (let i = 0; i < o.runs; i++) {
      for (const vmm of i % 2 ? [...names].reverse() : names) {
        const run = { round: i, at: new Date().toISOString(), ...(await oneRun(vmm, conf)) };
        runs.push(run);
        process.stderr.write(`blk: run ${i + 1}/${o.runs} ${vmm}: ` + (run.ok
          ? `${Object.entries(run.mibS).map(([k, x]) => `${k} ${f(x)}`).join(', ')} MiB/s\n`
          : `FAILED (${run.error})\n${run.outputTail}\n`));
        // Every finished boot is on disk at once: a job cut short keeps what it measured.
        const s = summarize(runs, names);
        writeJson(o.out, { bench: 'blk', env, config, complete: runs.length === o.runs * names.length, summary: s.summary, ratio: s.ratios, pairedRatio: s.paired, runs });
      }
    }
    const s = summarize(runs, names);
    print(`virtio-blk sequential, O_DIRECT in the guest (MiB/s; 4 KiB: ${o.smallMib} MiB, 1 MiB: ${o.largeMib} MiB each way), ${o.runs} runs each, vcpus=${o.vcpus} memory=${o.memory}`, names, s);
    process.exitCode = names.every((n) => s.summary[n].ok > 0) ? 0 : 1;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(`blk: ${e instanceof BenchError ? e.message : e.stack}\n`);
  process.exitCode = e instanceof BenchError ? 2 : 1;
});
