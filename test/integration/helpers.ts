// Shared by the integration tests: run the real CLI (dist/tsvmm.js, as a user would) against the
// default guest, and build guest commands for the init's `tsvmm.cmd=` hook.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { tmpdir } from 'node:os';
import { AgentClient } from '../../vmm/agent/client';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { encodeGuestCommand } from '../../vmm/default-guest';

export const ROOT = (() => {
  let d = dirname(fileURLToPath(import.meta.url));
  while (!d.endsWith('/dist') && d !== '/') d = dirname(d);
  return dirname(d);
})();
export const TSVMM = join(ROOT, 'bin/tsvmm.js');

export interface RunResult {
  code: number | null;
  /** The run outlived its timeoutMs and was stopped (SIGTERM, then SIGKILL after a grace). */
  timedOut?: boolean;
  stdout: string;
  stderr: string;
  ms: number;
}

/**
 * Runs `tsvmm ARGS` to completion (bounded by timeoutMs), capturing both streams. Past
 * timeoutMs it gets SIGTERM — on which exec and demo say what a guest that has not answered
 * was doing — and SIGKILL 30 s later; stderr then ends with a line saying so.
 */
export function tsvmm(
  args: string[],
  opts: {
    timeoutMs?: number; env?: NodeJS.ProcessEnv; cwd?: string; respond?: { when: string; send: string };
    /** stdin: written and closed at once, or when the promise resolves (stdin stays open until then). */
    input?: string | Promise<string>;
    /** Called with the stdout so far, and the tsvmm process (to signal it). */
    onStdout?: (soFar: string, child: ChildProcess) => void;
    /** Called once with the tsvmm process, right after it was spawned. */
    onStart?: (child: ChildProcess) => void;
  } = {},
): Promise<RunResult> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, [TSVMM, ...args], { cwd: opts.cwd ?? ROOT, env: { ...process.env, ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    opts.onStart?.(child);
    let stdout = '';
    let stderr = '';
    let responded = false;
    child.stdout.on('data', (b) => {
      stdout += b;
      opts.onStdout?.(stdout, child);
      if (opts.respond && !responded && stdout.includes(opts.respond.when)) {
        responded = true;
        child.stdin.end(opts.respond.send);
      }
    });
    child.stderr.on('data', (b) => (stderr += b));
    // A child that exited before its input came must not crash this process with EPIPE.
    child.stdin.on('error', () => {});
    if (opts.input !== undefined) void Promise.resolve(opts.input).then((s) => child.stdin.end(s));
    else if (!opts.respond) child.stdin.end();
    const timeoutMs = opts.timeoutMs ?? 300_000;
    let timedOut = false;
    let killTimer: NodeJS.Timeout | undefined;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGTERM');
      killTimer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    }, timeoutMs);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      clearTimeout(killTimer);
      if (timedOut) stderr += `\n[helpers.tsvmm: 'tsvmm ${args[0]}' still ran after ${timeoutMs} ms: sent SIGTERM; it ended with ${code ?? signal}]\n`;
      resolve({ code, timedOut, stdout, stderr, ms: Date.now() - t0 });
    });
  });
}

/** `tsvmm run` of the default guest running `cmd` in its init, then powering off. */
export function runGuestCommand(cmd: string, extra: string[] = []): Promise<RunResult> {
  return tsvmm(['run', '--append', `quiet ${encodeGuestCommand(cmd)}`, ...extra]);
}

/** Connects to a tsvmm vsock UDS with Firecracker's handshake; resolves once `OK <port>` came back. */
export function vsockConnect(udsPath: string, port: number, timeoutMs = 10_000): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = createConnection(udsPath);
    let buf = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no OK for CONNECT ${port} within ${timeoutMs} ms`));
    }, timeoutMs);
    const onData = (b: Buffer) => {
      buf += b.toString('latin1');
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      s.off('data', onData);
      const line = buf.slice(0, nl);
      if (!/^OK \d+$/.test(line)) {
        s.destroy();
        reject(new Error(`CONNECT ${port}: ${line}`));
        return;
      }
      const rest = Buffer.from(buf.slice(nl + 1), 'latin1');
      s.pause();
      if (rest.length) s.unshift(rest);
      resolve(s);
    };
    s.on('data', onData);
    s.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    s.on('close', () => {
      clearTimeout(timer);
      reject(new Error(`CONNECT ${port}: connection closed (${JSON.stringify(buf)})`));
    });
    s.write(`CONNECT ${port}\n`);
  });
}

/** A VM left running (`tsvmm run --vsock`) for tests that talk to its agent. */
export async function startVm(args: string[]): Promise<{ uds: string; stop(): Promise<RunResult>; out: () => string }> {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-it-'));
  const uds = join(dir, 'v.sock');
  const child = spawn(process.execPath, [TSVMM, 'run', '--vsock', `cid=3,uds=${uds}`, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b) => (stdout += b));
  child.stderr.on('data', (b) => (stderr += b));
  const closed = new Promise<number | null>((r) => child.on('close', r));
  let stopping = false;
  // A VMM that ends before stop() leaves its tests failing on a vanished socket: say why, once,
  // at 'exit' (not 'close', which waits for the pipes: a test that then crashes on the missing
  // socket would end this process first), and again at 'close' with the output that came later.
  let exited = '';
  let told = 0;
  child.on('exit', (code, signal) => {
    if (stopping) return;
    exited = `exit ${code ?? signal}`;
    told = (stdout + stderr).length;
    console.error(`[helpers.startVm: tsvmm run ended on its own (${exited}) while its tests ran; its last output:]\n${(stdout + stderr).slice(-4000)}`);
  });
  void closed.then(() => {
    if (!stopping && exited !== '') console.error(`[helpers.startVm: what tsvmm run printed after its exit:]\n${(stdout + stderr).slice(told)}`);
  });
  const t0 = Date.now();
  return {
    uds,
    out: () => stdout + stderr,
    async stop() {
      stopping = true;
      child.kill('SIGTERM');
      // Bounded: a tsvmm that ignores SIGTERM is killed, and says so in its stderr.
      const t = setTimeout(() => {
        stderr += '\n[helpers.startVm: tsvmm run still ran 30 s after SIGTERM: sent SIGKILL]\n';
        child.kill('SIGKILL');
      }, 30_000);
      const code = await closed;
      clearTimeout(t);
      rmSync(dir, { recursive: true, force: true });
      return { code, stdout, stderr, ms: Date.now() - t0 };
    },
  };
}

/**
 * An AgentClient over the VM's vsock UDS; waits (up to timeoutMs) until the agent answers. Each
 * ping is bounded (a connect made while the guest's driver probes can be dropped silently, and
 * an unbounded ping then waits forever); past timeoutMs it fails with the last ping's error.
 */
export async function agentOf(uds: string, timeoutMs = 300_000): Promise<AgentClient> {
  const client = new AgentClient(() => vsockConnect(uds, 52));
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await client.ping({ signal: AbortSignal.timeout(10_000) });
      return client;
    } catch (e) {
      if (Date.now() > deadline) throw new Error(`the agent at ${uds} did not answer within ${timeoutMs} ms (last ping: ${(e as Error).message})`, { cause: e });
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

/** Polls `cond` until it holds, failing with `what` after `ms`: tests wait for conditions, never for fixed times. */
export async function until(what: string, cond: () => boolean | Promise<boolean>, ms = 60_000, everyMs = 50): Promise<void> {
  const t0 = Date.now();
  while (!(await cond())) {
    if (Date.now() - t0 > ms) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * Reads a byte stream in exact pieces. It listens to 'data' for the stream's whole life and
 * keeps its own buffer, so no byte falls between two reads: a reader that removes its listener
 * and unshift()s the surplus onto a flowing socket loses that surplus (Node emits it again at
 * once, to no listener), and whoever waits for it waits forever.
 */
export class StreamReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private total = 0;
  private eof: string | undefined;
  private want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;

  constructor(s: Readable) {
    s.on('data', (b: Buffer) => {
      this.chunks.push(b);
      this.buffered += b.length;
      this.total += b.length;
      this.serve();
    });
    s.on('end', () => this.finish('EOF'));
    s.on('close', () => this.finish('closed'));
    s.on('error', (e) => this.finish(`error: ${e.message}`));
  }

  /** The next `n` bytes; rejects when the stream ends first. One read at a time. */
  read(n: number): Promise<Buffer> {
    if (this.want) return Promise.reject(new Error('StreamReader: a read is already pending'));
    return new Promise((resolve, reject) => {
      this.want = { n, resolve, reject };
      this.serve();
    });
  }

  /** What came so far, for a failure message. */
  describe(): string {
    const w = this.want ? `, a read of ${this.want.n} pending` : '';
    return `${this.total} bytes received, ${this.buffered} unread${w}${this.eof ? `, then ${this.eof}` : ''}`;
  }

  private serve(): void {
    const w = this.want;
    if (!w) return;
    if (this.buffered >= w.n) {
      const all = Buffer.concat(this.chunks);
      this.chunks = all.length > w.n ? [all.subarray(w.n)] : [];
      this.buffered -= w.n;
      this.want = undefined;
      w.resolve(all.subarray(0, w.n));
    } else if (this.eof) {
      this.want = undefined;
      w.reject(new Error(`${this.eof} after ${this.buffered} of ${w.n} bytes`));
    }
  }

  private finish(why: string): void {
    this.eof ??= why;
    this.serve();
  }
}
