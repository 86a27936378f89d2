// Fuzz target: the control API as raw bytes on its Unix socket. Valid requests of every
// resource, mutated (request line, headers, bodies: flips, truncation, splices of tricky
// tokens), cut into random pieces, some sent slowly, some never finished. Invariants: the
// server never throws or rejects unhandled, every connection ends with an HTTP status line or
// a close (never a hang past the request timeout), no response is a 500, and the server still
// answers GET / at the end.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as net from 'node:net';
import { rig } from '../api/fake';
import { fuzz, mutate } from './lib';

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);

function request(method: string, path: string, body?: string, extra = ''): string {
  const b = body ?? '';
  return `${method} ${path} HTTP/1.1\r\nHost: localhost\r\n${body === undefined ? '' : `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(b)}\r\n`}${extra}\r\n${b}`;
}

const DICT = [
  'http://[', 'http://x/', '//', '*', '%', '%00', '%zz', '\0', '\r\n', '\r\n\r\n', '\n', ' ', 'HTTP/1.0', 'HTTP/9.9',
  'Content-Length: 99999999999999999999\r\n', 'Content-Length: -1\r\n', 'Transfer-Encoding: chunked\r\n', '0\r\n\r\n',
  'ffffffff\r\n', 'Content-Type: text/plain\r\n', 'Expect: 100-continue\r\n', 'Connection: close\r\n', 'Upgrade: websocket\r\n',
  '{"a":', '[[[[[[[[', '1e400', '"\\ud800"', 'null', '__proto__', '{"__proto__":{"x":1}}', '4294967295', '-0', '1.5',
].map(enc);

test('control API raw bytes', async () => {
  const r = await rig({ headersTimeoutMs: 400, requestTimeoutMs: 800, attach: undefined });
  const problems: string[] = [];
  const onFatal = (e: unknown): void => { problems.push(String((e as Error)?.stack ?? e)); };
  process.on('unhandledRejection', onFatal);
  process.on('uncaughtException', onFatal);
  const corpus = [
    request('GET', '/'), request('GET', '/vm/config'), request('GET', '/metrics?format=prometheus'), request('GET', '/scheduler'),
    request('PUT', '/machine-config', '{"vcpu_count": 2, "mem_size_mib": 128}'),
    request('PUT', '/boot-source', JSON.stringify({ kernel_image_path: r.kernel, boot_args: 'console=ttyS0' })),
    request('PUT', '/vsock', '{"guest_cid": 3, "uds_path": "/tmp/fuzz-vsock"}'),
    request('PUT', '/actions', '{"action_type": "FlushMetrics"}'),
    request('PUT', '/scheduler', '{"policy": "static"}'), request('DELETE', '/bpf/programs/1'),
    request('PUT', '/bpf/programs', '{"builtin": "affinity"}'), request('GET', '/nope', undefined, 'Accept: text/plain\r\n'),
  ].map(enc);
  const statuses = new Map<string, number>();
  // A connection hangs when it got no answer although the server had the CPU to give one:
  // 5 s and 2 s of this process's CPU time since it opened (server and clients share this
  // process). A wall-clock limit alone reports every connection of a process the host did
  // not run for 5 s (a loaded machine: its timers fire before the answers waiting in its
  // sockets are read); HANG_WALL_MS is the limit for a process that hangs idle. A silent
  // client that has its answer is an idle keep-alive connection: the server closes it after
  // its keepAliveTimeout (5 s, plus node's 1 s), so it hangs only past KEEPALIVE_HANG_MS.
  const cpuMs = (): number => { const u = process.cpuUsage(); return (u.user + u.system) / 1000; };
  const HANG_MS = 5000;
  const KEEPALIVE_HANG_MS = 10_000;
  const HANG_CPU_MS = 2000;
  const HANG_WALL_MS = 60_000;
  const answered = (out: string): boolean => /^HTTP\/1\.1 \d{3} /.test(out);
  const one = (bytes: Uint8Array, cut: readonly number[], slowMs: number, silent: boolean): Promise<void> => new Promise((resolve) => {
    const s = net.connect(r.sock);
    let out = '';
    const t0 = performance.now();
    const c0 = cpuMs();
    const check = (): void => {
      const wall = performance.now() - t0;
      if (wall < HANG_WALL_MS && (cpuMs() - c0 < HANG_CPU_MS || (answered(out) && wall < KEEPALIVE_HANG_MS))) {
        timer = setTimeout(check, 1000);
        return;
      }
      problems.push(`connection ${answered(out) ? 'answered but not closed' : 'hung'} (${(wall / 1000).toFixed(1)} s, ${((cpuMs() - c0) / 1000).toFixed(1)} s CPU): ${JSON.stringify(Buffer.from(bytes).toString('latin1').slice(0, 200))}`);
      s.destroy();
    };
    let timer = setTimeout(check, HANG_MS);
    s.on('data', (d) => { out += d.toString('latin1'); });
    s.on('error', () => {});
    s.on('close', () => {
      clearTimeout(timer);
      const st = /^HTTP\/1\.1 (\d{3})/.exec(out)?.[1] ?? (out === '' ? 'closed' : 'garbage');
      statuses.set(st, (statuses.get(st) ?? 0) + 1);
      if (st === '500' || st === 'garbage') problems.push(`${st} for ${JSON.stringify(Buffer.from(bytes).toString('latin1').slice(0, 200))}: ${out.slice(0, 300)}`);
      resolve();
    });
    s.on('connect', async () => {
      let at = 0;
      for (const c of [...cut, bytes.length]) {
        if (s.destroyed) return;
        s.write(bytes.subarray(at, c));
        at = c;
        if (slowMs) await new Promise((res) => setTimeout(res, slowMs));
      }
      // Most clients close their side (the server answers what it has, then closes); a few
      // stay silent, and the server's timeouts must end them.
      if (!s.destroyed && !silent) s.end();
    });
  });
  const inflight = new Set<Promise<void>>();
  await fuzz('api', 5_000, async (rng) => {
    const base = rng.pick(corpus);
    const bytes = rng.chance(0.1) ? base : mutate(rng, base, DICT);
    const slow = rng.chance(0.002) ? 50 + rng.int(200) : 0;
    const pieces = rng.chance(0.8) ? 1 : 1 + rng.int(6);
    // Where the request is cut, from the seeded generator: a case replays exactly.
    const cut = Array.from({ length: pieces - 1 }, () => rng.int(bytes.length + 1)).sort((a, b) => a - b);
    const p = one(bytes, cut, slow, rng.chance(0.002));
    inflight.add(p);
    p.finally(() => inflight.delete(p));
    if (inflight.size >= 48) await Promise.race(inflight);
  }, () => `${inflight.size} in flight, server connections ${r.server.connections}, statuses ${JSON.stringify(Object.fromEntries(statuses))}, problems ${problems.length}${problems.length ? ` (last: ${problems[problems.length - 1]!.slice(0, 300)})` : ''}`);
  await Promise.all(inflight);
  process.off('unhandledRejection', onFatal);
  process.off('uncaughtException', onFatal);
  console.log(`  statuses ${JSON.stringify(Object.fromEntries([...statuses].sort()))}`);
  assert.equal(problems.slice(0, 5), []);
  const c = net.connect(r.sock);
  const reply = await new Promise<string>((resolve) => { let o = ''; c.on('data', (d) => (o += d)); c.on('close', () => resolve(o)); c.end(request('GET', '/', undefined, 'Connection: close\r\n')); });
  assert.match(reply, /^HTTP\/1\.1 200/);
  await r.close();
});

test.run();
