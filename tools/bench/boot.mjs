#!/usr/bin/env node
// Boot time, tsvmm against QEMU microvm: from spawning the VMM to the default guest's init
// printing `tsvmm-init: ready`, same kernel, initramfs, memory, vCPUs and command line
// (the guest command `true`, so the VM powers off right after), and each VMM's memory (RSS)
// when the guest is ready. Owns nothing but its output; needs hardware KVM, i.e. run it
// through tools/bench/run.sh on hosts without.
//
//   node tools/bench/boot.mjs [--runs 5] [--warmup 1] [--vcpus 2] [--memory 512M]
//        [--timeout 180] [--out FILE] [--kernel K] [--initrd I] [--qemu BIN] [--qemu-cpu host]
//        [--only tsvmm|qemu] [--verbose] [--force]
import {
  BASE_CMDLINE, BenchError, READY_MARKER, environment, fmt, guestCmd, guestFiles, parseArgs, processMemory, qemuArgs,
  ratio, requireKvm, runTimed, stats, tsvmmArgs, writeJson,
} from './lib.mjs';

const USAGE = `usage: node tools/bench/boot.mjs [options]
  --runs N        timed runs per VMM, alternating (default 5)
  --warmup N      untimed runs per VMM first (page cache; default 1)
  --vcpus N       (default 2)    --memory SIZE (default 512M)
  --timeout SEC   kill a run after SEC seconds and count it as failed (default 180)
  --out FILE      write every run as JSON
  --kernel PATH   (default: the default guest's bzImage)   --initrd PATH (default guest's image)
  --qemu BIN      (default qemu-system-x86_64)   --qemu-cpu MODEL (default host)
  --only VMM      tsvmm or qemu
  --verbose       the kernel's messages on the console (the command line without "quiet")
  --force         run even without a hardware KVM module
`;

const o = parseArgs(process.argv.slice(2), {
  runs: 5, warmup: 1, vcpus: 2, memory: '512M', timeout: 180, out: '', kernel: '', initrd: '',
  qemu: 'qemu-system-x86_64', qemuCpu: 'host', only: '', verbose: false, force: false,
}, USAGE);

async function main() {
  requireKvm(o.force);
  const { kernel, initrd } = guestFiles(o);
  const base = o.verbose ? BASE_CMDLINE.split(' ').filter((w) => w !== 'quiet').join(' ') : BASE_CMDLINE;
  const cmdline = `${base} ${guestCmd('true')}`;
  const conf = { kernel, initrd, cmdline, vcpus: o.vcpus, memory: o.memory, qemu: o.qemu, qemuCpu: o.qemuCpu };
  const vmms = { tsvmm: tsvmmArgs(conf), qemu: qemuArgs(conf) };
  const names = o.only ? [o.only] : ['tsvmm', 'qemu'];
  for (const n of names) if (!vmms[n]) throw new BenchError(`--only: unknown VMM ${n}`);

  const runs = [];
  const total = o.warmup + o.runs;
  for (let i = 0; i < total; i++) {
    // Swap the order every round so neither VMM always runs on the warmer machine.
    const order = i % 2 ? [...names].reverse() : names;
    for (const vmm of order) {
      const { cmd, args } = vmms[vmm];
      // With TSVMM_BENCH_RUN_ARGS="--log-level debug" tsvmm logs its start in phases (vmm/startup.ts).
      let startup = null;
      const onErrLine = (l) => {
        const m = /first KVM_RUN (\d+) ms after exec: (.*) \(ms\)/.exec(l);
        if (m) startup = { totalMs: Number(m[1]), phases: Object.fromEntries(m[2].split(', ').map((p) => { const i = p.lastIndexOf(' '); return [p.slice(0, i), Number(p.slice(i + 1))]; })) };
      };
      // Memory when the guest is ready: booted, idle until it powers off (issue 16 point 5).
      let pid;
      let memory = null;
      const onLine = (l) => {
        if (memory === null && l.startsWith(READY_MARKER)) memory = processMemory(pid);
      };
      const r = await runTimed(cmd, args, { timeoutMs: o.timeout * 1000, markers: [READY_MARKER], onErrLine, onLine, onSpawn: (p) => (pid = p) });
      const readyMs = r.seen[READY_MARKER] ?? null;
      let error = null;
      if (r.timedOut) error = `timeout after ${o.timeout} s`;
      else if (readyMs === null) error = `no "${READY_MARKER}" line`;
      else if (r.code !== 0) error = `exit status ${r.code ?? r.signal}`;
      const run = { vmm, round: i, warmup: i < o.warmup, ok: error === null, readyMs, exitMs: r.ms, exitCode: r.code, error, memoryMiB: memory, ...(startup ? { startup } : {}) };
      if (error) run.outputTail = r.tail.slice(-1500);
      runs.push(run);
      process.stderr.write(`boot: ${run.warmup ? 'warmup' : `run ${i - o.warmup + 1}/${o.runs}`} ${vmm}: ` +
        (run.ok ? `ready ${fmt(readyMs, 0)} ms, exit ${fmt(r.ms, 0)} ms${memory ? `, RSS ${memory.rss} MiB` : ''}${startup ? `, first KVM_RUN ${startup.totalMs} ms` : ''}\n` : `FAILED (${error})\n${run.outputTail}\n`));
    }
  }

  const summary = {};
  for (const vmm of names) {
    const timed = runs.filter((r) => r.vmm === vmm && !r.warmup);
    const ok = timed.filter((r) => r.ok);
    const mem = ok.filter((r) => r.memoryMiB);
    summary[vmm] = {
      ok: ok.length, failed: timed.length - ok.length, readyMs: stats(ok.map((r) => r.readyMs)), exitMs: stats(ok.map((r) => r.exitMs)),
      rssMiB: stats(mem.map((r) => r.memoryMiB.rss)), anonMiB: stats(mem.map((r) => r.memoryMiB.anon)), fileMiB: stats(mem.map((r) => r.memoryMiB.file)),
    };
    const st = ok.filter((r) => r.startup);
    if (st.length) {
      summary[vmm].startupMs = { total: stats(st.map((r) => r.startup.totalMs)) };
      for (const p of Object.keys(st[0].startup.phases)) summary[vmm].startupMs[p] = stats(st.map((r) => r.startup.phases[p] ?? 0));
    }
  }
  const both = summary.tsvmm && summary.qemu;
  const ratios = both ? {
    readyMin: ratio(summary.tsvmm.readyMs.min, summary.qemu.readyMs.min),
    readyMedian: ratio(summary.tsvmm.readyMs.median, summary.qemu.readyMs.median),
    // The memory goal is a difference, not a ratio: tsvmm's RSS at most QEMU's + 20 MiB.
    rssMedianDiffMiB: summary.tsvmm.rssMiB.median === null || summary.qemu.rssMiB.median === null ? null
      : Math.round((summary.tsvmm.rssMiB.median - summary.qemu.rssMiB.median) * 10) / 10,
  } : null;

  console.log(`boot to "${READY_MARKER}" (ms), ${o.runs} runs each, vcpus=${o.vcpus} memory=${o.memory}${o.verbose ? ', verbose console' : ''}`);
  console.log('vmm     ok/runs     min   median      max');
  for (const vmm of names) {
    const s = summary[vmm];
    console.log(`${vmm.padEnd(7)} ${`${s.ok}/${s.ok + s.failed}`.padStart(7)} ${fmt(s.readyMs.min, 0).padStart(7)} ${fmt(s.readyMs.median, 0).padStart(8)} ${fmt(s.readyMs.max, 0).padStart(8)}`);
  }
  if (ratios) console.log(`tsvmm/qemu: min ${fmt(ratios.readyMin, 2)}, median ${fmt(ratios.readyMedian, 2)}`);
  for (const vmm of names) {
    const s = summary[vmm];
    if (s.rssMiB.n) console.log(`${vmm} RSS at ready, median MiB: ${fmt(s.rssMiB.median, 1)} (anon ${fmt(s.anonMiB.median, 1)}, file ${fmt(s.fileMiB.median, 1)}; min ${fmt(s.rssMiB.min, 1)}, max ${fmt(s.rssMiB.max, 1)})`);
  }
  if (ratios?.rssMedianDiffMiB !== null && ratios) console.log(`RSS tsvmm - qemu, median: ${fmt(ratios.rssMedianDiffMiB, 1)} MiB`);
  const su = summary.tsvmm?.startupMs;
  if (su) console.log(`tsvmm's start to the first KVM_RUN, median ms: ${Object.entries(su).map(([p, s]) => `${p} ${fmt(s.median, 0)}`).join(', ')}`);

  writeJson(o.out, {
    bench: 'boot', env: environment(o.qemu),
    config: { runs: o.runs, warmup: o.warmup, vcpus: o.vcpus, memory: o.memory, verbose: o.verbose, timeoutSec: o.timeout, kernel, initrd, cmdline, commands: vmms },
    summary, ratio: ratios, runs,
  });
  const failed = names.some((n) => summary[n].ok === 0);
  process.exitCode = failed ? 1 : 0;
}

main().catch((e) => {
  process.stderr.write(`boot: ${e instanceof BenchError ? e.message : e.stack}\n`);
  process.exitCode = e instanceof BenchError ? 2 : 1;
});
