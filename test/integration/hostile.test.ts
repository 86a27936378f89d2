// A hostile guest against one VMM (docs/security.md §1, §6): guest/hostile.c floods the
// hypercall device with HINTS calls of ~8,000 records, churns vsock connections (32 at a time,
// every 8th to a port nobody listens on, half closed with RST) to a host port whose readers
// half sleep 2 s, and unbinds → pokes DRIVER_OK with a ring outside RAM → rebinds its vsock
// device in a loop, while its legitimate streams go to the host; a host client sends GET / to
// the API socket all along. One boot: the attack runs in `before`, the cases judge what it left.
// Correctness and bounds only: how fast GET / is answered under the flood is measured by
// tools/bench/hostile.mjs against the idle VMM of the same run (timing goals belong there),
// here every GET / must be answered 200 (the API never stopped serving).
// stress: in the nested sandbox its phase two (the hints flood beside the vsock unbind/rebind loop) met QEMU's nested-SVM fault in 3 of its 13 recorded runs on QEMU 10.0.2 (docs/testing.md)
// A stress file again since 2026-12-07 20:30 (run by name: npm test -- test/integration/hostile.test.ts).
// It was one after the final CI run of 2026-12-06 (guest triple fault in phase two, QEMU 7.2) and
// back in CI from 2026-12-07 on QEMU 10.0.2; since then, of its recorded runs in the sandbox, the
// guest triple-faulted in phase two in the first CI rehearsal of session 11 and in a helper's run
// of session 12 (vCPU 0 in a HINTS loop: its last 16 exits are ports 0x720/0x724), and in another
// the sandbox's own kernel died twice in a row (a kernel stack overflow in tsvmm-vcpu0's exception
// entry, which no user process can cause). A failure then fails with the vCPU's crash report in
// full in the failure message (tail() below): its last 16 exits, and its registers and CR2 — on
// the sandbox's AMD CPU model those are the INIT state KVM puts a shut-down vCPU in.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { request } from 'node:http';
import { createServer, type Server, type Socket } from 'node:net';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, TSVMM } from './helpers';
import { encodeGuestCommand } from '../../vmm/default-guest';

const MiB = 1024 * 1024;
const CHURN_PORT = 6000;
const STREAM_PORT = 6001;
const AFTER_RESET_PORT = 6002;
const STREAM_BYTES = 8 * MiB;
const AFTER_RESET_BYTES = 1 * MiB;
/** Guest seconds of each phase: hints + churn + the stream, then hints + device resets. */
const PHASE1_S = 20;
const PHASE2_S = 10;
/** The whole run's bound (boot, attack, power off); the VMM itself is told --timeout too. */
const RUN_S = 540;

/** guest/hostile.c's stream: xorshift32 from 0x9e3779b9, one byte (the low 8 bits) per step. */
class StreamCheck {
  private x = 0x9e3779b9;
  bytes = 0;
  /** Offset of the first byte that differs, if any. */
  mismatch: number | undefined;
  eof = false;
  feed(b: Buffer): void {
    let x = this.x;
    for (let i = 0; i < b.length; i++) {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      if (this.mismatch === undefined && b[i] !== (x & 0xff)) this.mismatch = this.bytes + i;
    }
    this.x = x;
    this.bytes += b.length;
  }
}

interface Sample {
  /** ms since the VMM started */
  t: number;
  ms: number;
  status: number;
}

interface Outcome {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** ms since the VMM started */
  attackStart?: number;
  attackEnd?: number;
  samples: Sample[];
  /** GET / that failed (no answer, reset), with when it was sent. */
  failedGets: { t: number; why: string }[];
  rss: { t: number; kib: number }[];
  streams: Map<number, StreamCheck>;
  churnConnections: number;
  /** The VMM answered GET / after the attack, before it powered off. */
  aliveAfter: boolean;
}

let out: Outcome;
let dir: string;

/** One GET / on a new connection; resolves with the status and the time it took. */
function getRoot(api: string, timeoutMs = 30_000): Promise<{ status: number; ms: number }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = request({ socketPath: api, path: '/', agent: false, timeout: timeoutMs }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, ms: performance.now() - t0 }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end();
  });
}

function rssKiB(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** Listens at the host end of guest connections to `port` (the vsock uds + `_<port>`). */
function listen(path: string, onConn: (s: Socket) => void): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer(onConn);
    server.once('error', reject);
    server.listen(path, () => resolve(server));
  });
}

const script = `
echo hostile: attack start
tsvmm-hostile hints ${PHASE1_S} & h=$!
tsvmm-hostile churn ${PHASE1_S} ${CHURN_PORT} & c=$!
tsvmm-hostile stream ${STREAM_PORT} ${STREAM_BYTES}; s1=$?
wait $h; wait $c
echo hostile: phase two
tsvmm-hostile hints ${PHASE2_S} & h=$!
tsvmm-hostile reset ${PHASE2_S}; r=$?
wait $h
tsvmm-hostile stream ${AFTER_RESET_PORT} ${AFTER_RESET_BYTES}; s2=$?
echo "hostile: attack end s1=$s1 r=$r s2=$s2"
sleep 3
[ $s1 = 0 ] && [ $r = 0 ] && [ $s2 = 0 ]
`;

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'tsvmm-hostile-'));
  const uds = join(dir, 'v.sock');
  const api = join(dir, 'api.sock');
  const streams = new Map<number, StreamCheck>();
  const sockets: Socket[] = [];
  let churnConnections = 0;
  const servers = [
    // Half the churn readers sleep 2 s on their bytes: data parked in tsvmm must stay bounded.
    await listen(`${uds}_${CHURN_PORT}`, (s) => {
      sockets.push(s);
      s.on('error', () => {});
      if (churnConnections++ % 2 === 0) {
        s.pause();
        setTimeout(() => s.resume(), 2000).unref();
      }
      s.resume();
    }),
    ...[STREAM_PORT, AFTER_RESET_PORT].map((port) => listen(`${uds}_${port}`, (s) => {
      sockets.push(s);
      const check = new StreamCheck();
      streams.set(port, check);
      s.on('data', (b: Buffer) => check.feed(b));
      s.on('end', () => {
        check.eof = true;
        s.end();
      });
      s.on('error', () => {});
    })),
  ];
  const listening = await Promise.all(servers);

  const t0 = performance.now();
  const child = spawn(process.execPath, [TSVMM, 'run', '--vcpus', '2', '--memory', '512M', '--timeout', String(RUN_S - 20),
    '--vsock', `cid=3,uds=${uds}`, '--api-sock', api, '--append', `quiet ${encodeGuestCommand(script)}`], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  const o: Outcome = { code: null, signal: null, stdout: '', stderr: '', samples: [], failedGets: [], rss: [], streams, churnConnections: 0, aliveAfter: false };
  let running = true;
  child.stdout.on('data', (b) => {
    o.stdout += b;
    const now = performance.now() - t0;
    if (o.attackStart === undefined && o.stdout.includes('hostile: attack start')) o.attackStart = now;
    if (o.attackEnd === undefined && o.stdout.includes('hostile: attack end')) {
      o.attackEnd = now;
      // The guest sleeps 3 s before powering off: the VMM must still answer.
      getRoot(api).then((r) => (o.aliveAfter = r.status === 200), () => {});
    }
  });
  child.stderr.on('data', (b) => (o.stderr += b));
  const exited = new Promise<void>((resolve) => child.on('exit', (code, signal) => {
    o.code = code;
    o.signal = signal;
    running = false;
    resolve();
  }));
  const kill = setTimeout(() => child.kill('SIGKILL'), RUN_S * 1000);

  // RSS every 200 ms; GET / one at a time, 10 ms apart, from the API socket's appearance on.
  const pid = child.pid as number;
  const rssTimer = setInterval(() => {
    const kib = rssKiB(pid);
    if (kib !== undefined) o.rss.push({ t: performance.now() - t0, kib });
  }, 200);
  const sampler = (async () => {
    while (running) {
      await new Promise((r) => setTimeout(r, 10));
      const t = performance.now() - t0;
      try {
        const r = await getRoot(api);
        o.samples.push({ t, ms: r.ms, status: r.status });
      } catch (e) {
        // Before the socket exists and as the VMM ends, a refused connect is expected: the
        // test counts only the failures during the attack.
        o.failedGets.push({ t, why: (e as Error).message });
      }
    }
  })();
  try {
    await exited;
    await sampler;
  } finally {
    clearTimeout(kill);
    clearInterval(rssTimer);
    for (const s of sockets) s.destroy();
    for (const s of listening) s.close();
  }
  o.churnConnections = churnConnections;
  out = o;
  const during = o.samples.filter((s) => o.attackStart !== undefined && s.t >= o.attackStart && s.t <= (o.attackEnd ?? Infinity)).map((s) => s.ms).sort((a, b) => a - b);
  const pct = (p: number) => during[Math.max(0, Math.ceil(p * during.length) - 1)]?.toFixed(0);
  console.log(`hostile: attack ${(((o.attackEnd ?? 0) - (o.attackStart ?? 0)) / 1000).toFixed(1)} s; GET / during it n=${during.length} p50=${pct(0.5)} ms p99=${pct(0.99)} ms max=${during.at(-1)?.toFixed(0)} ms; ` +
    `${churnConnections} churn connections; guest said: ${o.stdout.split('\n').filter((l) => l.startsWith('hostile:')).join(' | ')}`);
});

test.after(() => {
  rmSync(dir, { recursive: true, force: true });
});

/**
 * What a failure shows of the run: the end of the VMM's log and of the console, and a vCPU crash
 * report (vmm/diagnosis.ts formatCrash: its exit, registers, last exits) whole, wherever it is in
 * the log — the lines after it (teardown) could push it out of the last 2000 characters.
 */
const tail = () => {
  const at = out.stderr.indexOf(' at the crash:');
  const from = at < 0 ? -1 : out.stderr.lastIndexOf('\n', out.stderr.lastIndexOf('\n', at) - 1) + 1;
  const crash = at < 0 ? '' : `\n--- vCPU crash report ---\n${out.stderr.slice(from, from + 6000)}`;
  return `${crash}\n--- VMM stderr (last 2000) ---\n${out.stderr.slice(-2000)}\n--- console (last 2000) ---\n${out.stdout.slice(-2000)}`;
};

test('the VMM survives the attack: the guest ran every phase and powered off (exit 0), GET / answered after it', () => {
  assert.ok(out.attackStart !== undefined && out.attackEnd !== undefined, `the guest never finished its attack${tail()}`);
  assert.match(out.stdout, /hostile: hints \d+ calls/);
  assert.match(out.stdout, /hostile: churn opened \d+ connections/);
  assert.match(out.stdout, /hostile: reset [1-9]\d* unbind\/bind cycles, [1-9]\d* bad DRIVER_OKs/);
  assert.match(out.stdout, /hostile: attack end s1=0 r=0 s2=0/);
  assert.ok(out.aliveAfter, 'GET / after the attack');
  assert.is(out.signal, null, tail());
  assert.is(out.code, 0, `tsvmm exit status${tail()}`);
});

test('the legitimate streams arrive byte-exact: during the flood and churn, and over the rebound device after the resets', () => {
  for (const [port, n] of [[STREAM_PORT, STREAM_BYTES], [AFTER_RESET_PORT, AFTER_RESET_BYTES]] as const) {
    const s = out.streams.get(port);
    assert.ok(s, `no connection on port ${port}${tail()}`);
    assert.is(s.mismatch, undefined, `port ${port}: the first wrong byte at offset ${s.mismatch}`);
    assert.is(s.bytes, n, `port ${port}: bytes received`);
    assert.ok(s.eof, `port ${port}: the guest's shutdown arrived`);
  }
  assert.ok(out.churnConnections > 0, 'the churn reached the host');
});

test('VMM RSS grows by at most 64 MiB over the attack', () => {
  const start = out.attackStart as number;
  const before = out.rss.filter((r) => r.t <= start).at(-1);
  assert.ok(before, 'an RSS sample before the attack');
  const peak = Math.max(...out.rss.filter((r) => r.t >= start).map((r) => r.kib));
  const growthMiB = (peak - before.kib) / 1024;
  console.log(`hostile: VMM RSS ${(before.kib / 1024).toFixed(1)} MiB before the attack, peak ${(peak / 1024).toFixed(1)} MiB (+${growthMiB.toFixed(1)} MiB)`);
  assert.ok(growthMiB <= 64, `RSS grew ${growthMiB.toFixed(1)} MiB`);
});

test('every GET / during the attack was answered 200', () => {
  const during = out.samples.filter((s) => s.t >= (out.attackStart as number) && s.t <= (out.attackEnd as number));
  assert.ok(during.length >= 20, `only ${during.length} GET / during the attack`);
  const failed = out.failedGets.filter((f) => f.t >= (out.attackStart as number) && f.t <= (out.attackEnd as number));
  assert.equal(failed.map((f) => `${(f.t / 1000).toFixed(1)} s: ${f.why}`), [], 'GET / requests that failed');
  assert.equal(during.filter((s) => s.status !== 200).map((s) => s.status), []);
});

test("the guest cannot write the operator's log: its agent name escaped, no escape character, a device's needs-reset lines rate-limited", () => {
  assert.not.ok(out.stderr.includes('\x1b'), 'an escape character reached the log');
  assert.not.match(out.stderr, /^tsvmm: forged line/m, 'a forged line reached the log');
  assert.ok(out.stderr.includes('guest agent "hostile\\ntsvmm: forged line\\x1b[2J"'), `the hostile HELLO's name, escaped${tail()}`);
  const resets = out.stderr.split('\n').filter((l) => /device needs reset/.test(l)).length;
  const seconds = ((out.attackEnd as number) - (out.attackStart as number)) / 1000;
  // A burst of 10, then one a second (vmm/log.ts RateLimitedLog), whatever the guest does.
  assert.ok(resets <= 10 + Math.ceil(seconds) + 1, `${resets} needs-reset lines in ${seconds.toFixed(0)} s`);
  // And the bound is the limiter's doing, not a quiet device: each bad DRIVER_OK the guest made
  // was refused (NEEDS_RESET) and is either a line or counted in a "suppressed" summary (flushed
  // at teardown). A cycle makes 20 in a row, more than the burst, so some are always suppressed.
  const pokes = Number(/(\d+) bad DRIVER_OKs/.exec(out.stdout)?.[1]);
  const vsockLines = out.stderr.split('\n').filter((l) => /virtio-vsock: device needs reset/.test(l)).length;
  const suppressed = [...out.stderr.matchAll(/virtio-vsock: (\d+) similar lines? suppressed/g)].reduce((n, m) => n + Number(m[1]), 0);
  console.log(`hostile: ${pokes} bad DRIVER_OKs; virtio-vsock needs-reset lines ${vsockLines}, suppressed ${suppressed}`);
  assert.ok(suppressed > 0, `no needs-reset line suppressed after ${pokes} bad DRIVER_OKs`);
  assert.ok(vsockLines + suppressed >= pokes, `${pokes} bad DRIVER_OKs, but ${vsockLines} needs-reset lines + ${suppressed} suppressed: a poke was not refused`);
});

test.run();
