#!/usr/bin/env node
// vsock throughput, tsvmm against QEMU: MiB/s host->guest and guest->host of one stream of
// N MiB with its SHA-256 checked on both ends, then a concurrent echo: the host streams M MiB
// (--echo-mib) to the guest on port 5003 while it reads the guest's echo back, checked byte
// for byte. tsvmm: `--vsock cid=3,uds=PATH`, Firecracker's
// hybrid protocol: the guest connects to host port P and tsvmm forwards to PATH_P (5001 for
// host->guest, 5002 for guest->host); `--h2g-by host` instead opens host->guest from the host
// (PATH + `CONNECT 5001`). QEMU: microvm + vhost-vsock-device, the host end is AF_VSOCK
// (needs /dev/vhost-vsock). Both ends run guest/vsock-bench.c (the same static binary;
// tools/bench/guest-build.sh puts it into the default guest). Owns nothing but its output
// and a temp dir; needs hardware KVM, i.e. run it through tools/bench/run.sh.
//
//   node tools/bench/vsock.mjs [--mib 64] [--echo-mib 8] [--runs 3] [--vcpus 2] [--memory 512M]
//        [--timeout 300] [--out FILE] [--only tsvmm|qemu] [--h2g-by guest|host] [--force] ...
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { release, tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  BASE_CMDLINE, BenchError, READY_MARKER, ROOT, environment, fmt, guestCmd, guestFiles, kernelRecord,
  pairedRatios, parseArgs, qemuArgs, ratio, requireKvm, runTimed, stats, tsvmmArgs, writeJson,
} from './lib.mjs';

const USAGE = `usage: node tools/bench/vsock.mjs [options]
  --mib N         MiB per direction (default 64)
  --echo-mib N    MiB the host streams through the guest's echo, reading it back meanwhile (default 8)
  --runs N        runs per VMM, alternating (default 3)
  --vcpus N       (default 2)    --memory SIZE (default 512M)
  --timeout SEC   kill a run (VM and both host ends) after SEC seconds: failed (default 300)
  --out FILE      write every run as JSON
  --kernel PATH   --initrd PATH   --qemu BIN   --qemu-cpu MODEL (default host)
  --helper PATH   the vsock-bench binary for the host end (default guest/build/vsock-bench)
  --only VMM      tsvmm or qemu
  --h2g-by WHO    who opens the host->guest connection: guest (default; it connects to host
                  port 5001, tsvmm forwards to PATH_5001) or host (hybrid CONNECT 5001 /
                  AF_VSOCK connect to CID 3)
  --force         run even without a hardware KVM module
`;
const H2G_PORT = 5001;
const G2H_PORT = 5002;
const ECHO_PORT = 5003;
const CID = 3;
const LINE = /^vsock-bench: role=(send|recv|echo-send|echo) bytes=(\d+) secs=([\d.]+) mib_s=([\d.]+) sha256=([0-9a-f]*) peer_sha256=([0-9a-f]*) ok=([01])/;

const o = parseArgs(process.argv.slice(2), {
  mib: 64, echoMib: 8, runs: 3, vcpus: 2, memory: '512M', timeout: 300, out: '', kernel: '', initrd: '',
  qemu: 'qemu-system-x86_64', qemuCpu: 'host', helper: join(ROOT, 'guest/build/vsock-bench'), only: '', h2gBy: 'guest', force: false,
}, USAGE);

function parseLine(l) {
  const m = LINE.exec(l.trim());
  return m && { role: m[1], bytes: Number(m[2]), secs: Number(m[3]), mibS: Number(m[4]), sha256: m[5], peerSha256: m[6], ok: m[7] === '1' };
}

/** /dev/vhost-vsock, loading vhost_vsock if needed; null when present, else why not. */
function vhostVsock() {
  if (existsSync('/dev/vhost-vsock')) return null;
  spawnSync('modprobe', ['vhost_vsock'], { stdio: 'ignore' });
  // The nested sandbox runs the default guest's own Debian kernel, whose modules sit in the cache.
  try {
    const rec = kernelRecord();
    if (!existsSync('/dev/vhost-vsock') && rec.version === release()) {
      const base = rec.modulesDir.slice(0, -`/lib/modules/${rec.version}`.length);
      spawnSync('modprobe', ['-d', base, '-S', rec.version, 'vhost_vsock'], { stdio: 'ignore' });
    }
  } catch { /* no record: nothing more to try */ }
  return existsSync('/dev/vhost-vsock') ? null : `no /dev/vhost-vsock on this host (kernel ${release()}; modprobe vhost_vsock failed)`;
}

/** Resolves once `child` printed the listener line on stderr (or ended). */
function listening() {
  let ready;
  const p = new Promise((r) => (ready = r));
  return { p, onErrLine: (l) => { if (l.includes('listening')) ready(); } };
}

async function oneRun(vmm, conf, bytes, echoBytes) {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-vsock-'));
  const uds = join(dir, 'v.sock');
  const timeoutMs = o.timeout * 1000;
  try {
    const byHost = o.h2gBy === 'host';
    const h2gEp = vmm === 'tsvmm'
      ? (byHost ? `uds-connect:${uds}:${H2G_PORT}` : `uds-listen:${uds}_${H2G_PORT}`)
      : (byHost ? `connect:${CID}:${H2G_PORT}` : `listen:${H2G_PORT}`);
    const g2hEp = vmm === 'tsvmm' ? `uds-listen:${uds}_${G2H_PORT}` : `listen:${G2H_PORT}`;
    const echoEp = vmm === 'tsvmm' ? `uds-listen:${uds}_${ECHO_PORT}` : `listen:${ECHO_PORT}`;
    const guestLines = [];
    const hostLines = { send: [], recv: [], echo: [] };
    const lst = listening();
    const lst2 = listening();
    const lst3 = listening();
    // Host ends still waiting some seconds after the VM is gone never get their peer.
    const ac = new AbortController();
    const hostRecv = runTimed(o.helper, ['recv', g2hEp], { timeoutMs, signal: ac.signal, onLine: (l) => hostLines.recv.push(l), onErrLine: lst.onErrLine });
    const hostEcho = runTimed(o.helper, ['echo-send', String(echoBytes), echoEp], { timeoutMs, signal: ac.signal, onLine: (l) => hostLines.echo.push(l), onErrLine: lst3.onErrLine });
    await Promise.all([Promise.race([lst.p, hostRecv]), Promise.race([lst3.p, hostEcho])]);
    const guestH2g = byHost ? `listen:${H2G_PORT}` : `connect:2:${H2G_PORT}`;
    const cmdline = `${BASE_CMDLINE} ${guestCmd(`vsock-bench recv ${guestH2g} && vsock-bench send ${bytes} connect:2:${G2H_PORT} && vsock-bench echo connect:2:${ECHO_PORT}`)}`;
    const { cmd, args } = (vmm === 'tsvmm' ? tsvmmArgs : qemuArgs)({ ...conf, cmdline, vsock: { cid: CID, uds } });
    const hostSend = runTimed(o.helper, ['send', String(bytes), h2gEp], { timeoutMs, signal: ac.signal, onLine: (l) => hostLines.send.push(l), onErrLine: lst2.onErrLine });
    if (!byHost) await Promise.race([lst2.p, hostSend]);
    const vm = runTimed(cmd, args, { timeoutMs, markers: [READY_MARKER], onLine: (l) => guestLines.push(l) });
    const grace = vm.then(() => setTimeout(() => ac.abort(), 10_000));
    const [v, s, r, e] = await Promise.all([vm, hostSend, hostRecv, hostEcho]);
    clearTimeout(await grace);

    const pick = (lines, role) => lines.map(parseLine).find((x) => x && x.role === role) ?? null;
    const h2g = { host: pick(hostLines.send, 'send'), guest: pick(guestLines, 'recv') };
    const g2h = { host: pick(hostLines.recv, 'recv'), guest: pick(guestLines, 'send') };
    // echo-send checked the echo byte for byte (ok); the guest's digest of what it echoed must be the data's.
    const echo = { host: pick(hostLines.echo, 'echo-send'), guest: pick(guestLines, 'echo') };
    const errors = [];
    if (v.timedOut || s.timedOut || r.timedOut || e.timedOut) errors.push(`timeout after ${o.timeout} s`);
    for (const [dirName, d, n] of [['host->guest', h2g, bytes], ['guest->host', g2h, bytes], ['echo', echo, echoBytes]]) {
      if (!d.host || !d.guest) errors.push(`${dirName}: missing result line (${d.host ? 'guest' : 'host'})`);
      else if (!d.host.ok || !d.guest.ok || d.host.sha256 !== d.guest.sha256 || d.host.bytes !== n) errors.push(`${dirName}: SHA-256 or length mismatch`);
    }
    if (!errors.length && v.code !== 0) errors.push(`VMM exit status ${v.code ?? v.signal}`);
    const run = {
      vmm, ok: errors.length === 0, error: errors.join('; ') || null, vmExit: v.code ?? v.signal, bootMs: v.seen[READY_MARKER] ?? null, exitMs: v.ms,
      h2gMibS: h2g.host?.mibS ?? null, g2hMibS: g2h.host?.mibS ?? null, echoMibS: echo.host?.mibS ?? null, h2g, g2h, echo,
    };
    if (!run.ok) run.outputTail = { vm: v.tail.slice(-1500), hostSend: s.tail.slice(-500), hostRecv: r.tail.slice(-500), hostEcho: e.tail.slice(-500) };
    return run;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main() {
  requireKvm(o.force);
  if (!existsSync(o.helper)) throw new BenchError(`no vsock-bench helper at ${o.helper}: run tools/bench/guest-build.sh`);
  const { kernel, initrd } = guestFiles(o);
  const listing = execFileSync('sh', ['-c', `gzip -dc "$1" | cpio -t --quiet`, 'sh', initrd], { encoding: 'utf8' });
  if (!listing.split('\n').includes('usr/bin/vsock-bench')) {
    throw new BenchError(`${initrd} has no usr/bin/vsock-bench: run tools/bench/guest-build.sh, then tools/guest/build-initramfs.sh`);
  }
  const bytes = Math.round(o.mib * 1048576);
  const echoBytes = Math.round(o.echoMib * 1048576);
  const conf = { kernel, initrd, vcpus: o.vcpus, memory: o.memory, qemu: o.qemu, qemuCpu: o.qemuCpu };
  let names = o.only ? [o.only] : ['tsvmm', 'qemu'];
  for (const n of names) if (n !== 'tsvmm' && n !== 'qemu') throw new BenchError(`--only: unknown VMM ${n}`);
  if (o.h2gBy !== 'guest' && o.h2gBy !== 'host') throw new BenchError(`--h2g-by: guest or host, not ${o.h2gBy}`);
  const qemuSkipped = names.includes('qemu') ? vhostVsock() : null;
  if (qemuSkipped) {
    process.stderr.write(`vsock: QEMU skipped: ${qemuSkipped}; reporting tsvmm alone\n`);
    names = names.filter((n) => n !== 'qemu');
  }

  const runs = [];
  for (let i = 0; i < o.runs; i++) {
    for (const vmm of i % 2 ? [...names].reverse() : names) {
      const run = { round: i, ...(await oneRun(vmm, conf, bytes, echoBytes)) };
      runs.push(run);
      process.stderr.write(`vsock: run ${i + 1}/${o.runs} ${vmm}: ` + (run.ok
        ? `host->guest ${fmt(run.h2gMibS)} MiB/s, guest->host ${fmt(run.g2hMibS)} MiB/s, echo ${fmt(run.echoMibS)} MiB/s\n`
        : `FAILED (${run.error})\n${JSON.stringify(run.outputTail, null, 1)}\n`));
    }
  }

  const summary = {};
  for (const vmm of names) {
    const ok = runs.filter((r) => r.vmm === vmm && r.ok);
    summary[vmm] = { ok: ok.length, failed: runs.filter((r) => r.vmm === vmm).length - ok.length, h2gMibS: stats(ok.map((r) => r.h2gMibS)), g2hMibS: stats(ok.map((r) => r.g2hMibS)), echoMibS: stats(ok.map((r) => r.echoMibS)) };
  }
  const ratios = summary.tsvmm && summary.qemu ? {
    h2gMedian: ratio(summary.tsvmm.h2gMibS.median, summary.qemu.h2gMibS.median),
    g2hMedian: ratio(summary.tsvmm.g2hMibS.median, summary.qemu.g2hMibS.median),
    echoMedian: ratio(summary.tsvmm.echoMibS.median, summary.qemu.echoMibS.median),
  } : null;
  // Within rounds too (lib.mjs pairedRatios): the shared sandbox's speed drifts 2-3x between
  // rounds, which the medians over all runs mix in.
  const pairedRatio = ratios ? {
    h2g: pairedRatios(runs, (r) => r.h2gMibS), g2h: pairedRatios(runs, (r) => r.g2hMibS), echo: pairedRatios(runs, (r) => r.echoMibS),
  } : null;

  console.log(`vsock stream of ${o.mib} MiB each way, echo of ${o.echoMib} MiB (MiB/s, SHA-256 checked), ${o.runs} runs each, vcpus=${o.vcpus} memory=${o.memory}`);
  console.log('vmm     ok/runs   host->guest median (min..max)   guest->host median (min..max)   echo median (min..max)');
  for (const vmm of names) {
    const s = summary[vmm];
    const col = (x) => `${fmt(x.median)} (${fmt(x.min)}..${fmt(x.max)})`.padEnd(32);
    console.log(`${vmm.padEnd(7)} ${`${s.ok}/${s.ok + s.failed}`.padStart(7)}   ${col(s.h2gMibS)}${col(s.g2hMibS)}${col(s.echoMibS)}`);
  }
  if (qemuSkipped) console.log(`qemu: not measured: ${qemuSkipped}`);
  if (ratios) console.log(`tsvmm/qemu (median): host->guest ${fmt(ratios.h2gMedian, 2)}, guest->host ${fmt(ratios.g2hMedian, 2)}, echo ${fmt(ratios.echoMedian, 2)}`);
  if (pairedRatio) {
    const col = (x) => `${fmt(x.median, 2)} (${fmt(x.min, 2)}..${fmt(x.max, 2)}, ${x.n} rounds)`;
    console.log(`tsvmm/qemu within rounds: host->guest ${col(pairedRatio.h2g)}, guest->host ${col(pairedRatio.g2h)}, echo ${col(pairedRatio.echo)} (goal >= 0.8)`);
  }

  writeJson(o.out, {
    bench: 'vsock', env: environment(o.qemu),
    config: { mib: o.mib, bytes, echoMib: o.echoMib, echoBytes, runs: o.runs, vcpus: o.vcpus, memory: o.memory, timeoutSec: o.timeout, kernel, initrd, cid: CID, ports: { h2g: H2G_PORT, g2h: G2H_PORT, echo: ECHO_PORT }, h2gOpenedBy: o.h2gBy },
    qemuSkipped, summary, ratio: ratios, pairedRatio, runs,
  });
  process.exitCode = names.every((n) => summary[n].ok > 0) ? 0 : 1;
}

main().catch((e) => {
  process.stderr.write(`vsock: ${e instanceof BenchError ? e.message : e.stack}\n`);
  process.exitCode = e instanceof BenchError ? 2 : 1;
});
