#!/usr/bin/env node
// The exec round trip: `tsvmm exec -- true` on the default guest, from spawning the process to
// its exit, broken down by the --json line tsvmm prints (Node start; boot: the rest of the way
// to the guest init's `ready`; agent: from there to the agent's first answer; the command; and
// the teardown after it), against QEMU microvm booting the same kernel and initramfs with the
// init running `true` itself and powering off (no agent: the fastest a fresh VM can run a
// command). Owns nothing but its output; needs hardware KVM, i.e. run it through
// tools/bench/run.sh on hosts without.
//
//   node tools/bench/exec.mjs [--runs 5] [--warmup 1] [--vcpus 1] [--memory 256M] [--out FILE]
import {
  BASE_CMDLINE, BenchError, ROOT, environment, fmt, guestCmd, guestFiles, parseArgs, qemuArgs,
  ratio, requireKvm, runTimed, stats, writeJson,
} from './lib.mjs';
import { join } from 'node:path';

const USAGE = `usage: node tools/bench/exec.mjs [options]
  --runs N        timed runs per VMM, alternating (default 5)
  --warmup N      untimed runs per VMM first (default 1)
  --vcpus N       (default 1)    --memory SIZE (default 256M)
  --timeout SEC   kill a run after SEC seconds and count it as failed (default 300)
  --out FILE      write every run as JSON
  --kernel PATH   (default: the default guest's bzImage)   --initrd PATH (default guest's image)
  --qemu BIN      (default qemu-system-x86_64)   --qemu-cpu MODEL (default host)
  --only VMM      tsvmm or qemu
  --force         run even without a hardware KVM module
`;

const o = parseArgs(process.argv.slice(2), {
  runs: 5, warmup: 1, vcpus: 1, memory: '256M', timeout: 300, out: '', kernel: '', initrd: '',
  qemu: 'qemu-system-x86_64', qemuCpu: 'host', only: '', force: false,
}, USAGE);

const PHASES = ['nodeMs', 'bootMs', 'agentMs', 'commandMs', 'teardownMs'];

async function main() {
  requireKvm(o.force);
  const { kernel, initrd } = guestFiles(o);
  const tsvmm = {
    cmd: process.execPath,
    args: [join(ROOT, 'bin/tsvmm.js'), 'exec', '--json', '--quiet', '--kernel', kernel, '--initrd', initrd,
      '--cmdline', BASE_CMDLINE, '--vcpus', String(o.vcpus), '--memory', o.memory, '--', 'true'],
  };
  const qemu = qemuArgs({ kernel, initrd, cmdline: `${BASE_CMDLINE} ${guestCmd('true')}`, vcpus: o.vcpus, memory: o.memory, qemu: o.qemu, qemuCpu: o.qemuCpu });
  const vmms = { tsvmm, qemu };
  const names = o.only ? [o.only] : ['tsvmm', 'qemu'];
  for (const n of names) if (!vmms[n]) throw new BenchError(`--only: unknown VMM ${n}`);

  const runs = [];
  for (let i = 0; i < o.warmup + o.runs; i++) {
    const order = i % 2 ? [...names].reverse() : names;
    for (const vmm of order) {
      let json = null;
      const r = await runTimed(vmms[vmm].cmd, vmms[vmm].args, {
        timeoutMs: o.timeout * 1000,
        onLine: (l) => {
          if (l.startsWith('{"status"')) json = JSON.parse(l);
        },
      });
      let error = null;
      if (r.timedOut) error = `timeout after ${o.timeout} s`;
      else if (r.code !== 0) error = `exit status ${r.code ?? r.signal}`;
      else if (vmm === 'tsvmm' && !json) error = 'no --json line';
      const run = { vmm, round: i, warmup: i < o.warmup, ok: error === null, wallMs: r.ms, error };
      if (json) {
        const t = json.timings;
        // totalMs is when tsvmm printed the line (ms since its process started); the rest until
        // the process is gone is the teardown, measured from here.
        Object.assign(run, { nodeMs: t.nodeMs, bootMs: t.bootMs, agentMs: t.agentMs, commandMs: t.commandMs, teardownMs: r.ms - t.nodeMs - t.bootMs - t.agentMs - t.commandMs });
      }
      if (error) run.outputTail = r.tail.slice(-1500);
      runs.push(run);
      process.stderr.write(`exec: ${run.warmup ? 'warmup' : `run ${i - o.warmup + 1}/${o.runs}`} ${vmm}: ` +
        (run.ok ? `${fmt(r.ms, 0)} ms${json ? ` (${PHASES.map((p) => `${p.replace('Ms', '')} ${fmt(run[p], 0)}`).join(', ')})` : ''}\n` : `FAILED (${error})\n${run.outputTail}\n`));
    }
  }

  const summary = {};
  for (const vmm of names) {
    const ok = runs.filter((r) => r.vmm === vmm && !r.warmup && r.ok);
    summary[vmm] = { ok: ok.length, failed: runs.filter((r) => r.vmm === vmm && !r.warmup).length - ok.length, wallMs: stats(ok.map((r) => r.wallMs)) };
    if (vmm === 'tsvmm') for (const p of PHASES) summary.tsvmm[p] = stats(ok.map((r) => r[p]));
  }
  const ratios = summary.tsvmm && summary.qemu ? { wallMedian: ratio(summary.tsvmm.wallMs.median, summary.qemu.wallMs.median) } : null;

  console.log(`exec round trip for \`true\` (ms, spawn to exit), ${o.runs} runs each, vcpus=${o.vcpus} memory=${o.memory}`);
  console.log('vmm     ok/runs    median   ' + PHASES.map((p) => p.replace('Ms', '').padStart(9)).join(''));
  for (const vmm of names) {
    const s = summary[vmm];
    const phases = vmm === 'tsvmm' ? PHASES.map((p) => fmt(s[p].median, 0).padStart(9)).join('') : '   (QEMU: its init runs `true` and powers off; no agent)';
    console.log(`${vmm.padEnd(7)} ${`${s.ok}/${s.ok + s.failed}`.padStart(7)} ${fmt(s.wallMs.median, 0).padStart(9)}   ${phases}`);
  }
  if (ratios) console.log(`tsvmm/qemu wall: median ${fmt(ratios.wallMedian, 2)}`);

  writeJson(o.out, {
    bench: 'exec', env: environment(o.qemu),
    config: { runs: o.runs, warmup: o.warmup, vcpus: o.vcpus, memory: o.memory, timeoutSec: o.timeout, kernel, initrd, commands: vmms },
    summary, ratio: ratios, runs,
  });
  process.exitCode = names.some((n) => summary[n].ok === 0) ? 1 : 0;
}

main().catch((e) => {
  process.stderr.write(`exec: ${e instanceof BenchError ? e.message : e.stack}\n`);
  process.exitCode = e instanceof BenchError ? 2 : 1;
});
