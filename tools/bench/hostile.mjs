#!/usr/bin/env node
// The API's responsiveness under a hostile guest: `GET /` latency on tsvmm's API socket, one
// request at a time on a new connection each, while the default guest goes through phases in
// one boot — idle (the peer every other phase is divided by), busy (both vCPUs spinning: CPU
// contention only), hints (guest/hostile.c's HINTS flood on top of the spinning), flood (hints
// + vsock churn + the vsock device reset loop, as test/integration/hostile.test.ts does) — and
// per phase the main thread's CPU time and its wait for a CPU (/proc schedstat), and the API's
// HTTP thread's (`tsvmm-api`, where there is one: vmm/api/worker.ts). The goal
// (issue 12): flood p99 ≤ 100 ms in the nested sandbox. With --cpu-prof DIR tsvmm runs under
// V8's profiler and the report adds where the main thread's time went in each phase.
// Owns nothing but its output; needs KVM, i.e. run it through tools/bench/run.sh on hosts
// without (there: `flock /tmp/tsvmm-sandbox.lock tools/bench/run.sh hostile`).
//
//   node tools/bench/hostile.mjs [--phase SEC] [--vcpus 2] [--memory 512M] [--out FILE] [--cpu-prof DIR]
import { BASE_CMDLINE, BenchError, ROOT, environment, fmt, guestCmd, guestFiles, parseArgs, ratio, requireKvm, writeJson } from './lib.mjs';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { createServer } from 'node:net';
import { setPriority, tmpdir } from 'node:os';
import { join } from 'node:path';

const USAGE = `usage: node tools/bench/hostile.mjs [options]
  --phase SEC     guest seconds per phase (default 20)
  --vcpus N       (default 2)    --memory SIZE (default 512M)
  --interval MS   pause between two GET / (default 10)
  --timeout SEC   kill tsvmm after SEC seconds (default 600)
  --out FILE      write the samples' statistics as JSON
  --cpu-prof DIR  run tsvmm under node --cpu-prof, the profile in DIR; report the main
                  thread's top functions per phase
  --kernel PATH   (default: the default guest's bzImage)   --initrd PATH (default guest's image)
  --main-nice N   renice tsvmm's main thread (only it: the vCPU threads exist by then) to N
                  when the guest is up (a negative N needs CAP_SYS_NICE): what a main thread
                  the kernel prefers over the vCPU threads would gain
  --force         run even without a hardware KVM module
`;

const o = parseArgs(process.argv.slice(2), {
  phase: 20, vcpus: 2, memory: '512M', interval: 10, timeout: 600, out: '', cpuProf: '', kernel: '', initrd: '', force: false, mainNice: '',
}, USAGE);

const PHASES = ['idle', 'busy', 'hints', 'flood'];
const CHURN_PORT = 6000;

/** The guest: one marker line per phase on the console; spinners on every vCPU from `busy` on. */
function script(sec) {
  return [
    `echo bench: idle; sleep ${sec}`,
    `echo bench: busy; n=$(grep -c ^processor /proc/cpuinfo); spin=; i=0; while [ $i -lt $n ]; do (while :; do :; done) & spin="$spin $!"; i=$((i+1)); done; sleep ${sec}`,
    `echo bench: hints; tsvmm-hostile hints ${sec}`,
    `echo bench: flood; tsvmm-hostile hints ${sec} & h=$!; tsvmm-hostile churn ${sec} ${CHURN_PORT} & c=$!; tsvmm-hostile reset ${sec}; wait $h; wait $c`,
    'echo bench: end; kill $spin',
  ].join('\n');
}

function get(api, path = '/') {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const req = request({ socketPath: api, path, agent: false, timeout: 60_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, ms: Number(process.hrtime.bigint() - t0) / 1e6, body }));
    });
    req.on('timeout', () => req.destroy(new Error('no answer within 60 s')));
    req.on('error', reject);
    req.end();
  });
}

/** A thread's CPU time (utime+stime, ms) and schedstat (ran, waited for a CPU: ms). */
function threadTimes(pid, tid) {
  try {
    const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8').split(') ')[1].split(' ');
    const [ran, waited] = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ').map(Number);
    const tick = 10; // USER_HZ 100
    return { cpuMs: (Number(stat[11]) + Number(stat[12])) * tick, ranMs: ran / 1e6, waitedMs: waited / 1e6 };
  } catch {
    return undefined;
  }
}

/** The tid of tsvmm's API thread (named tsvmm-api), or undefined (a tsvmm that serves HTTP on main). */
function apiThread(pid) {
  try {
    for (const t of readdirSync(`/proc/${pid}/task`)) {
      try {
        if (readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trim() === 'tsvmm-api') return Number(t);
      } catch {
        // the thread ended meanwhile
      }
    }
  } catch {
    // the process ended
  }
  return undefined;
}

function pct(sorted, p) {
  return sorted.length ? sorted[Math.max(0, Math.ceil(p * sorted.length) - 1)] : null;
}

/** The counters of a /metrics document as path -> number (the groups that say what main did). */
function counters(m) {
  const out = {};
  const walk = (o, path) => {
    for (const [k, v] of Object.entries(o ?? {})) {
      if (typeof v === 'number') out[`${path}.${k}`] = v;
      else if (v && typeof v === 'object') walk(v, `${path}.${k}`); // arrays by index (forwarded_deferred: per vCPU)
    }
  };
  for (const g of ['forwarded_exits', 'forwarded_deferred', 'hypercall', 'hints', 'hint_stream', 'scheduler', 'vsock', 'transports']) walk(m?.[g], g);
  return out;
}

/** What changed between two /metrics documents (non-zero differences only); null without both. */
function counterDelta(a, b) {
  if (!a || !b) return null;
  const x = counters(a);
  const out = {};
  for (const [k, v] of Object.entries(counters(b))) if (v !== (x[k] ?? 0)) out[k] = v - (x[k] ?? 0);
  return out;
}

/** Self time by function of the samples taken in [from, to) (µs, CLOCK_MONOTONIC). */
function profileByPhase(dir, bounds) {
  // CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile: thread 0 is the main thread (the vCPU workers write their own, or cannot under seccomp).
  const file = readdirSync(dir).filter((f) => /\.\d+\.0\.\d+\.cpuprofile$/.test(f)).map((f) => join(dir, f)).sort().pop();
  if (!file) return null;
  const p = JSON.parse(readFileSync(file, 'utf8'));
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const name = (n) => `${n.callFrame.functionName || '(anonymous)'} ${n.callFrame.url.split('/').slice(-1)[0]}:${n.callFrame.lineNumber + 1}`;
  const out = {};
  for (const b of bounds) out[b.phase] = { totalMs: 0, idleMs: 0, self: new Map(), inclusive: new Map() };
  let t = p.startTime;
  for (let i = 0; i < p.samples.length; i++) {
    t += p.timeDeltas[i] ?? 0;
    const dt = (p.timeDeltas[i + 1] ?? 0) / 1000;
    const b = bounds.find((x) => t >= x.fromUs && t < x.toUs);
    if (!b) continue;
    const ph = out[b.phase];
    const leaf = byId.get(p.samples[i]);
    ph.totalMs += dt;
    if (leaf.callFrame.functionName === '(idle)') {
      ph.idleMs += dt;
      continue;
    }
    ph.self.set(name(leaf), (ph.self.get(name(leaf)) ?? 0) + dt);
    const seen = new Set();
    for (let id = leaf.id; id !== undefined; id = parent.get(id)) {
      const k = name(byId.get(id));
      if (seen.has(k)) continue;
      seen.add(k);
      ph.inclusive.set(k, (ph.inclusive.get(k) ?? 0) + dt);
    }
  }
  const top = (m, n) => [...m].sort((a, b) => b[1] - a[1]).slice(0, n).map(([k, ms]) => ({ fn: k, ms: Math.round(ms) }));
  const res = {};
  for (const [k, v] of Object.entries(out)) res[k] = { file, ...bounds.find((b) => b.phase === k), totalMs: Math.round(v.totalMs), idleMs: Math.round(v.idleMs), self: top(v.self, 20), inclusive: top(v.inclusive, 30) };
  return res;
}

async function main() {
  requireKvm(o.force);
  const { kernel, initrd } = guestFiles(o);
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-bench-hostile-'));
  const uds = join(dir, 'v.sock');
  const api = join(dir, 'api.sock');
  // The churn's host end: read and discard.
  const churn = createServer((s) => { s.on('error', () => {}); s.resume(); });
  await new Promise((r) => churn.listen(`${uds}_${CHURN_PORT}`, r));
  const nodeFlags = o.cpuProf ? ['--cpu-prof', `--cpu-prof-dir=${o.cpuProf}`] : [];
  const args = [...nodeFlags, join(ROOT, 'bin/tsvmm.js'), 'run', '--quiet', '--kernel', kernel, '--initrd', initrd,
    '--vcpus', String(o.vcpus), '--memory', o.memory, '--vsock', `cid=3,uds=${uds}`, '--api-sock', api,
    '--cmdline', `${BASE_CMDLINE} ${guestCmd(script(o.phase))}`];
  const nowUs = () => Number(process.hrtime.bigint() / 1000n);
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const pid = child.pid;
  let stdout = '';
  let stderr = '';
  let phase = 'boot';
  const marks = [{ phase: 'boot', us: nowUs(), times: threadTimes(pid, pid) }];
  let apiTid;
  let gets = 0;
  let partial = '';
  const guestLines = [];
  child.stdout.setEncoding('utf8').on('data', (d) => {
    stdout = (stdout + d).slice(-20000);
    const lines = (partial + d).split('\n');
    partial = lines.pop() ?? '';
    for (const l of lines) {
      // The guest program's own summary (calls made, taken, refused): what the main thread's cost is per.
      if (/^hostile: /.test(l)) guestLines.push({ phase, line: l.replace(/\r$/, '') });
      const m = /^bench: (\w+)/.exec(l.replace(/\r$/, ''));
      if (!m || m[1] === phase) continue;
      phase = m[1];
      if (phase === 'idle' && o.mainNice !== '') setPriority(pid, Number(o.mainNice)); // the main thread's tid is the pid
      apiTid ??= apiThread(pid);
      marks.push({ phase, us: nowUs(), times: threadTimes(pid, pid), api: apiTid === undefined ? undefined : threadTimes(pid, apiTid), gets });
      process.stderr.write(`hostile bench: ${phase}\n`);
    }
  });
  child.stderr.setEncoding('utf8').on('data', (d) => (stderr = (stderr + d).slice(-8000)));
  let running = true;
  const exited = new Promise((r) => child.on('close', (code, signal) => { running = false; r({ code, signal }); }));
  const kill = setTimeout(() => child.kill('SIGKILL'), o.timeout * 1000);
  const samples = [];
  const failures = [];
  while (running) {
    await new Promise((r) => setTimeout(r, o.interval));
    const p = phase;
    try {
      // A phase began: the VMM's counters once (not a sample), so each phase's forwarded exits and hint records can be read.
      const mark = marks.at(-1);
      if ([...PHASES, 'end'].includes(mark.phase) && mark.metrics === undefined) {
        mark.metrics = null;
        mark.metrics = await get(api, '/metrics?format=json').then((r) => JSON.parse(r.body), () => null);
      }
      const r = await get(api);
      samples.push({ phase: p, ms: r.ms, status: r.status });
      gets++;
    } catch (e) {
      if (PHASES.includes(p)) failures.push({ phase: p, error: e.message });
    }
  }
  const { code, signal } = await exited;
  clearTimeout(kill);
  churn.close();
  rmSync(dir, { recursive: true, force: true });
  if (!marks.some((m) => m.phase === 'end')) throw new BenchError(`the guest did not reach its end (exit ${code ?? signal})\n${stdout.slice(-2000)}\n${stderr.slice(-2000)}`);

  const result = { bench: 'hostile', environment: environment('qemu-system-x86_64'), options: o, exit: code ?? signal, phases: {} };
  const bounds = [];
  for (const p of PHASES) {
    const i = marks.findIndex((m) => m.phase === p);
    const a = marks[i];
    const b = marks[i + 1];
    bounds.push({ phase: p, fromUs: a.us, toUs: b.us });
    const counted = counterDelta(a.metrics, b.metrics);
    const v = samples.filter((s) => s.phase === p).map((s) => s.ms).sort((x, y) => x - y);
    const wallMs = (b.us - a.us) / 1000;
    const delta = (x, y) => (x && y ? { cpuMs: y.cpuMs - x.cpuMs, ranMs: y.ranMs - x.ranMs, waitedMs: y.waitedMs - x.waitedMs } : null);
    const t = delta(a.times, b.times);
    const h = delta(a.api, b.api);
    result.phases[p] = {
      n: v.length, p50: pct(v, 0.5), p99: pct(v, 0.99), max: v.at(-1) ?? null, non200: samples.filter((s) => s.phase === p && s.status !== 200).length,
      failed: failures.filter((f) => f.phase === p).length, wallMs,
      mainThread: t && { ...t, cpuShare: t.cpuMs / wallMs, waitShare: t.waitedMs / wallMs, cpuMsPerGet: v.length ? t.cpuMs / v.length : null },
      apiThread: h && { ...h, cpuShare: h.cpuMs / wallMs, waitShare: h.waitedMs / wallMs, cpuMsPerGet: v.length ? h.cpuMs / v.length : null },
      // The VMM's own counters over the phase (forwarded exits by device, HINTS calls and records, ...).
      counters: counted,
    };
  }
  for (const p of PHASES) {
    result.phases[p].p50VsIdle = ratio(result.phases[p].p50, result.phases.idle.p50);
    result.phases[p].p99VsIdle = ratio(result.phases[p].p99, result.phases.idle.p99);
  }
  result.guest = guestLines;
  result.goal = { what: 'flood p99 <= 100 ms', met: result.phases.flood.p99 !== null && result.phases.flood.p99 <= 100 };
  if (o.cpuProf) {
    try {
      result.profile = profileByPhase(o.cpuProf, bounds);
    } catch (e) {
      result.profileError = e.message;
    }
  }
  writeJson(o.out, result);

  const lines = ['phase  GET / n   p50 ms   p99 ms   max ms  p99/idle  main thread: cpu%  wait%  cpu ms/GET   API thread: cpu%  wait%  cpu ms/GET'];
  for (const p of PHASES) {
    const r = result.phases[p];
    const m = r.mainThread;
    lines.push(`${p.padEnd(6)} ${String(r.n).padStart(7)} ${fmt(r.p50, 1).padStart(8)} ${fmt(r.p99, 1).padStart(8)} ${fmt(r.max, 0).padStart(8)} ${fmt(r.p99VsIdle, 2).padStart(9)}` +
      `  ${m ? fmt(100 * m.cpuShare, 0).padStart(16) : '-'.padStart(16)} ${m ? fmt(100 * m.waitShare, 0).padStart(6) : '-'} ${m ? fmt(m.cpuMsPerGet, 2).padStart(10) : '-'}` +
      (r.apiThread ? `  ${fmt(100 * r.apiThread.cpuShare, 0).padStart(16)} ${fmt(100 * r.apiThread.waitShare, 0).padStart(6)} ${fmt(r.apiThread.cpuMsPerGet, 2).padStart(10)}` : '') +
      (r.failed || r.non200 ? `  (${r.failed} failed, ${r.non200} not 200)` : ''));
  }
  for (const p of PHASES) {
    const c = result.phases[p].counters;
    if (!c) continue;
    const fwd = Object.entries(c).filter(([k]) => k.startsWith('forwarded_exits.')).map(([k, n]) => `${k.slice(16)} ${n}`).join(', ');
    const pick = (k) => c[k] ?? 0;
    const waited = Object.entries(c).filter(([k]) => k.startsWith('forwarded_deferred.')).map(([k, n]) => `vCPU ${k.slice(19)} ${n}`).join(', ');
    lines.push(`counters (${p}): forwarded exits ${fwd || 'none'}${waited ? ` (waited for their vCPU's share of main: ${waited})` : ''}; HINTS calls ${pick('hypercall.calls.HINTS')}, records queued ${pick('hypercall.hintRecords')}, ` +
      `refused by the registry ${pick('hints.refused')}, decoded ${pick('hints.decoded')}; vsock transport resets ${pick('transports.virtio-vsock.resets')}`);
  }
  for (const g of guestLines) lines.push(`guest (${g.phase}): ${g.line}`);
  lines.push(`goal ${result.goal.what}: ${result.goal.met ? 'met' : 'NOT met'} (flood p99 ${fmt(result.phases.flood.p99, 1)} ms)`);
  if (result.profileError) lines.push(`profile: ${result.profileError}`);
  if (result.profile) {
    for (const p of PHASES) {
      const pr = result.profile[p];
      lines.push(`profile ${p}: ${pr.totalMs} ms sampled, ${pr.idleMs} idle; self: ${pr.self.slice(0, 8).map((s) => `${s.fn} ${s.ms}`).join('; ')}`);
    }
  }
  process.stdout.write(lines.join('\n') + '\n');
}

main().catch((e) => {
  process.stderr.write(`hostile bench: ${e instanceof BenchError ? e.message : e.stack}\n`);
  process.exit(1);
});
