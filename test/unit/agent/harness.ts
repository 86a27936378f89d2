// Test harness for the guest agent on the host: builds guest/ with its Makefile, runs
// tsvmm-agent --unix in a temp dir, and offers a raw frame-level session for protocol
// abuse tests. Used by test/unit/agent/*.test.ts only.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AgentClient } from '../../../vmm/agent/client';
import { unixConnector } from '../../../vmm/agent/connect';
import { FrameDecoder, type Frame } from '../../../vmm/agent/protocol';

export function repoRoot(): string {
  let d = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(d, 'package.json');
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'tsvmm') return d;
    const up = dirname(d);
    if (up === d) throw new Error('cannot find the tsvmm checkout above ' + fileURLToPath(import.meta.url));
    d = up;
  }
}

export function buildAgent(): string {
  const guest = join(repoRoot(), 'guest');
  execFileSync('make', ['-s', '-C', guest], { stdio: ['ignore', 'ignore', 'inherit'] });
  return join(guest, 'build', 'tsvmm-agent');
}

export interface RunningAgent {
  dir: string;
  sock: string;
  proc: ChildProcess;
  client: AgentClient;
  log: () => string;
  stop: () => Promise<void>;
}

export async function startAgent(extraArgs: string[] = []): Promise<RunningAgent> {
  const bin = buildAgent();
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-agent-'));
  const sock = join(dir, 'agent.sock');
  const proc = spawn(bin, ['--unix', sock, ...extraArgs], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`agent did not start: ${log}`)), 10_000);
    proc.stderr!.on('data', (d: Buffer) => {
      log += d.toString();
      if (log.includes('listening on')) {
        clearTimeout(timer);
        resolve();
      }
    });
    proc.once('exit', (code) => reject(new Error(`agent exited with ${code}: ${log}`)));
  });
  const stop = async (): Promise<void> => {
    if (proc.exitCode === null) {
      const gone = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      await gone;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  return { dir, sock, proc, client: new AgentClient(unixConnector(sock)), log: () => log, stop };
}

/** A connection driven frame by frame, for malformed-input tests. */
export class RawSession {
  readonly frames: Frame[] = [];
  readonly closed: Promise<void>;
  private readonly decoder = new FrameDecoder();

  private constructor(readonly sock: Socket) {
    sock.on('data', (d: Buffer) => this.frames.push(...this.decoder.push(d)));
    this.closed = new Promise((r) => sock.once('close', () => r()));
    sock.on('error', () => {});
  }

  static open(path: string): Promise<RawSession> {
    return new Promise((resolve, reject) => {
      const s = connect(path, () => resolve(new RawSession(s)));
      s.once('error', reject);
    });
  }

  send(bytes: Uint8Array): void {
    this.sock.write(bytes);
  }

  async waitFor(pred: (f: Frame) => boolean, ms = 5000): Promise<Frame> {
    const end = Date.now() + ms;
    for (;;) {
      const f = this.frames.find(pred);
      if (f) return f;
      if (Date.now() > end) throw new Error(`no matching frame in ${ms} ms (got ${this.frames.map((x) => x.type.toString(16)).join(',')})`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

export function header(type: number, len: number, reserved = 0): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt16LE(type, 0);
  b.writeUInt16LE(reserved, 2);
  b.writeUInt32LE(len >>> 0, 4);
  return b;
}

export async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, rej) => (t = setTimeout(() => rej(new Error(`${what}: timed out after ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(t);
  }
}

/** True while `pid` runs (a zombie counts as gone). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // A zombie still answers kill(0); its state letter says it is gone.
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/\) [ZX] /.test(stat);
  } catch {
    return false;
  }
}
