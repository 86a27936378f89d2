#!/usr/bin/env node
// Serial transmit throughput, tsvmm against QEMU microvm (issue 16 point 2: a guest writing
// 1 MiB to ttyS0 runs at >= 1.0x QEMU's rate). Both boot the default guest with the same
// kernel, initramfs and command line; its command writes --bytes 'x' bytes to /dev/ttyS0
// through the tty layer (Linux's 8250 driver: THRE interrupts, 16 bytes a batch), timed in the
// guest (/proc/uptime, 10 ms steps), and the bytes are timed again where they leave the VMM
// (its stdout: first to last). Owns nothing but its output; needs hardware KVM, i.e. run it
// through tools/bench/run.sh on hosts without.
//
//   node tools/bench/serial.mjs [--bytes 1048576] [--runs 1] [--vcpus 1] [--memory 512M]
//        [--timeout 600] [--out FILE] [--kernel K] [--initrd I] [--qemu BIN] [--qemu-cpu host]
//        [--only tsvmm|qemu] [--force]
import {
  BASE_CMDLINE, BenchError, READY_MARKER, environment, fmt, guestCmd, guestFiles, parseArgs, qemuArgs,
  ratio, requireKvm, runTimed, stats, tsvmmArgs, writeJson,
} from './lib.mjs';

const USAGE = `usage: node tools/bench/serial.mjs [options]
  --bytes N       bytes the guest writes to /dev/ttyS0 (default 1048576)
  --runs N        timed runs per VMM, alternating (default 1)
  --vcpus N       (default 1)    --memory SIZE (default 512M)
  --timeout SEC   kill a run after SEC seconds and count it as failed (default 600)
  --out FILE      write every run as JSON
  --kernel PATH   (default: the default guest's bzImage)   --initrd PATH (default guest's image)
  --qemu BIN      (default qemu-system-x86_64)   --qemu-cpu MODEL (default host)
  --only VMM      tsvmm or qemu
  --force         run even without a hardware KVM module
`;

const o = parseArgs(process.argv.slice(2), {
  bytes: 1048576, runs: 1, vcpus: 1, memory: '512M', timeout: 600, out: '', kernel: '', initrd: '',
  qemu: 'qemu-system-x86_64', qemuCpu: 'host', only: '', force: false,
}, USAGE);

const START = 'serial-bench: start';
const RESULT = /serial-bench: bytes=(\d+) uptime=([\d.]+)-([\d.]+)/;

/**
 * The guest's command: a start line, the bytes (no newline among them, so the tty's output
 * processing adds none), then the guest's own clock around the write. The console stays on
 * ttyS0 too (quiet: nothing else writes meanwhile).
 */
function guestScript(bytes) {
  return `echo ${START}; read a _ </proc/uptime; head -c ${bytes} /dev/zero | tr '\\0' x >/dev/ttyS0; ` +
    `read b _ </proc/uptime; echo; echo "serial-bench: bytes=${bytes} uptime=$a-$b"`;
}

/**
 * Follows the console as it streams: after READY_MARKER and START, counts the 'x' bytes and
 * times the first and the last (the run of them ends at the first other byte), then keeps the
 * text after them (the guest's RESULT line). No line splitting: the bytes are one long line.
 */
function byteClock() {
  let text = '';
  let phase = 'boot'; // boot -> start -> bytes -> done
  const c = { received: 0, firstMs: null, lastMs: null, after: '' };
  const feed = (d, ms) => {
    if (phase === 'done') {
      if (c.after.length < 4096) c.after += d;
      return;
    }
    if (phase !== 'bytes') {
      text += d;
      const want = phase === 'boot' ? READY_MARKER : START;
      const at = text.indexOf(want);
      if (at < 0) {
        text = text.slice(-want.length);
        return;
      }
      const rest = text.slice(at + want.length);
      text = '';
      phase = phase === 'boot' ? 'start' : 'bytes';
      if (rest) feed(rest, ms);
      return;
    }
    let i = 0;
    if (c.received === 0) {
      i = d.indexOf('x');
      if (i < 0) return;
      c.firstMs = ms;
    }
    let n = 0;
    while (i < d.length && d.charCodeAt(i) === 0x78) { i++; n++; }
    if (n > 0) {
      c.received += n;
      c.lastMs = ms;
    }
    if (i < d.length) {
      phase = 'done';
      c.after = d.slice(i);
    }
  };
  return { feed, c };
}

async function main() {
  requireKvm(o.force);
  if (!Number.isInteger(o.bytes) || o.bytes < 1) throw new BenchError(`--bytes ${o.bytes}: not a positive integer`);
  const { kernel, initrd } = guestFiles(o);
  const cmdline = `${BASE_CMDLINE} ${guestCmd(guestScript(o.bytes))}`;
  const conf = { kernel, initrd, cmdline, vcpus: o.vcpus, memory: o.memory, qemu: o.qemu, qemuCpu: o.qemuCpu };
  const vmms = { tsvmm: tsvmmArgs(conf), qemu: qemuArgs(conf) };
  const names = o.only ? [o.only] : ['tsvmm', 'qemu'];
  for (const n of names) if (!vmms[n]) throw new BenchError(`--only: unknown VMM ${n}`);

  const runs = [];
  for (let i = 0; i < o.runs; i++) {
    // Swap the order every round so neither VMM always runs on the warmer machine.
    const order = i % 2 ? [...names].reverse() : names;
    for (const vmm of order) {
      const { cmd, args } = vmms[vmm];
      const clock = byteClock();
      const r = await runTimed(cmd, args, { timeoutMs: o.timeout * 1000, onData: clock.feed });
      const { received, firstMs, lastMs, after } = clock.c;
      const m = RESULT.exec(after);
      const guest = m ? { bytes: Number(m[1]), ms: Math.round((Number(m[3]) - Number(m[2])) * 1000) } : null;
      let error = null;
      if (r.timedOut) error = `timeout after ${o.timeout} s`;
      else if (!guest) error = 'no "serial-bench: bytes=" line from the guest';
      else if (received !== o.bytes) error = `${received} bytes arrived of ${o.bytes}`;
      else if (r.code !== 0) error = `exit status ${r.code ?? r.signal}`;
      const hostMs = firstMs !== null && lastMs !== null ? lastMs - firstMs : null;
      const run = {
        vmm, round: i, ok: error === null, bytes: o.bytes, received, guestMs: guest?.ms ?? null, hostMs,
        guestKiBps: guest?.ms ? o.bytes / 1024 / (guest.ms / 1000) : null,
        hostKiBps: hostMs ? o.bytes / 1024 / (hostMs / 1000) : null,
        exitMs: r.ms, exitCode: r.code, error,
      };
      if (error) run.outputTail = r.tail.slice(-1500);
      runs.push(run);
      process.stderr.write(`serial: run ${i + 1}/${o.runs} ${vmm}: ` + (run.ok
        ? `${o.bytes} B in ${run.guestMs} ms (guest clock; ${fmt(run.guestKiBps, 0)} KiB/s), ${fmt(hostMs, 0)} ms first to last byte on the host (${fmt(run.hostKiBps, 0)} KiB/s)\n`
        : `FAILED (${error})\n${run.outputTail}\n`));
    }
  }

  const summary = {};
  for (const vmm of names) {
    const ok = runs.filter((r) => r.vmm === vmm && r.ok);
    summary[vmm] = { ok: ok.length, failed: runs.filter((r) => r.vmm === vmm).length - ok.length, guestKiBps: stats(ok.map((r) => r.guestKiBps)), hostKiBps: stats(ok.map((r) => r.hostKiBps)) };
  }
  // Throughput: higher is better, so tsvmm/qemu >= 1.0 meets the goal.
  const ratios = summary.tsvmm && summary.qemu ? {
    guestMedian: ratio(summary.tsvmm.guestKiBps.median, summary.qemu.guestKiBps.median),
    hostMedian: ratio(summary.tsvmm.hostKiBps.median, summary.qemu.hostKiBps.median),
  } : null;

  console.log(`serial: ${o.bytes} bytes to /dev/ttyS0, ${o.runs} run(s) each, vcpus=${o.vcpus} memory=${o.memory}`);
  console.log('vmm     ok/runs  guest KiB/s (median)  host KiB/s (median)');
  for (const vmm of names) {
    const s = summary[vmm];
    console.log(`${vmm.padEnd(7)} ${`${s.ok}/${s.ok + s.failed}`.padStart(7)} ${fmt(s.guestKiBps.median, 0).padStart(21)} ${fmt(s.hostKiBps.median, 0).padStart(20)}`);
  }
  if (ratios) console.log(`tsvmm/qemu throughput: guest clock ${fmt(ratios.guestMedian, 2)}, host ${fmt(ratios.hostMedian, 2)} (goal >= 1.0)`);

  writeJson(o.out, {
    bench: 'serial', env: environment(o.qemu),
    config: { bytes: o.bytes, runs: o.runs, vcpus: o.vcpus, memory: o.memory, timeoutSec: o.timeout, kernel, initrd, cmdline, commands: vmms },
    summary, ratio: ratios, runs,
  });
  process.exitCode = names.some((n) => summary[n].ok === 0) ? 1 : 0;
}

main().catch((e) => {
  process.stderr.write(`serial: ${e instanceof BenchError ? e.message : e.stack}\n`);
  process.exitCode = e instanceof BenchError ? 2 : 1;
});
