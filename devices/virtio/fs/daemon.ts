// virtiofsd, the vhost-user back-end that serves one shared directory: finding it, starting
// one per share with its socket in a private (0700) directory, noticing its death and making
// sure none outlives tsvmm. This module owns those processes and their directory; it must not
// speak vhost-user (frontend.ts) or know the transport.
//
// Read-only shares: QEMU's C virtiofsd (Debian 12) has no read-only option, so the daemon runs
// in a mount namespace of its own where the directory is bind-mounted read-only: the host
// kernel refuses every write (EROFS) whatever the guest does, even if it remounts its side
// read-write. The Rust virtiofsd gets the same treatment (its --readonly is newer than Debian
// 12's). Both need root for their own sandbox (chroot), and so does the namespace.
//
// No daemon outlives tsvmm: stop() is called by the machine's teardown (also on SIGINT and
// SIGTERM), a process 'exit' hook kills any still running, and each daemon is started with
// PR_SET_PDEATHSIG (setpriv) so that even a SIGKILLed tsvmm takes them along. virtiofsd itself
// also exits when its vhost-user connection closes.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { accessSync, constants as fsConstants, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { connectUnix } from '../../../kvm/libc';
import { TsvmmError } from '../../../lib/errors';

export class VirtiofsdError extends TsvmmError {}

/** Where distributions install virtiofsd when it is not on PATH (Debian 13 package; Debian 12's qemu-system-common). */
export const VIRTIOFSD_LOCATIONS = ['/usr/libexec/virtiofsd', '/usr/lib/qemu/virtiofsd', '/usr/local/libexec/virtiofsd'];

export const VIRTIOFSD_HOWTO = "install it (Debian 13+: apt-get install virtiofsd; Debian 12: tools/setup.sh puts QEMU 7.2's at /usr/local/libexec/virtiofsd, as does apt-get install qemu-system-common of Debian 12's own QEMU at /usr/lib/qemu/virtiofsd) or set TSVMM_VIRTIOFSD to its path";

function isExecutableFile(p: string): boolean {
  try {
    if (!statSync(p).isFile()) return false;
    accessSync(p, fsConstants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** The virtiofsd to run: $TSVMM_VIRTIOFSD, else the first on PATH, else a distribution's place. */
export function findVirtiofsd(env: NodeJS.ProcessEnv = process.env, locations: readonly string[] = VIRTIOFSD_LOCATIONS): string {
  const forced = env.TSVMM_VIRTIOFSD;
  if (forced !== undefined && forced !== '') {
    if (isExecutableFile(forced)) return forced;
    throw new VirtiofsdError(`TSVMM_VIRTIOFSD=${forced} is not an executable file: ${VIRTIOFSD_HOWTO}`);
  }
  for (const dir of (env.PATH ?? '').split(delimiter)) {
    if (dir && isExecutableFile(join(dir, 'virtiofsd'))) return join(dir, 'virtiofsd');
  }
  for (const p of locations) if (isExecutableFile(p)) return p;
  throw new VirtiofsdError(`virtiofsd not found (searched PATH, ${locations.join(', ')}): ${VIRTIOFSD_HOWTO}`);
}

/** The C daemon (QEMU ≤ 7.2) takes `-o source=`, the Rust one `--shared-dir`; both take --socket-path. */
export function virtiofsdArgs(flavour: 'c' | 'rust', socket: string, source: string): string[] {
  if (flavour === 'rust') return [`--socket-path=${socket}`, `--shared-dir=${source}`, '--cache=auto', '--sandbox=chroot', '--log-level=error'];
  return [`--socket-path=${socket}`, '-o', `source=${source}`, '-o', 'cache=auto', '-o', 'sandbox=chroot', '-o', 'log_level=err'];
}

const flavours = new Map<string, 'c' | 'rust'>();
function flavourOf(binary: string): 'c' | 'rust' {
  let f = flavours.get(binary);
  if (!f) {
    const r = spawnSync(binary, ['--help'], { encoding: 'utf8', timeout: 10_000 });
    f = `${r.stdout}${r.stderr}`.includes('--shared-dir') ? 'rust' : 'c';
    flavours.set(binary, f);
  }
  return f;
}

function onPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) if (dir && isExecutableFile(join(dir, name))) return join(dir, name);
  return undefined;
}

/** Daemons alive in this process: killed synchronously if Node exits without stopping them. */
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

export interface DaemonOptions {
  binary: string;
  /** Host directory to serve. */
  source: string;
  readOnly: boolean;
  /** Names the share in messages, e.g. "/srv/data:/mnt/data". */
  label: string;
  /** How long to wait for the socket (the nested sandbox is slow). */
  startTimeoutMs?: number;
  /** The daemon died while the VM needed it. */
  onDeath: (why: string) => void;
}

export class Virtiofsd {
  readonly socketPath: string;
  private readonly child: ChildProcess;
  private readonly stderrTail: string[] = [];
  private stopping = false;
  /** Listening and connected: from then on an exit is a death to report (before, start() fails). */
  private up = false;
  private exitedAt?: string;
  private readonly exited: Promise<void>;

  private constructor(private readonly dir: string, private readonly o: DaemonOptions) {
    this.socketPath = join(dir, 'vhost-user.sock');
    const args = virtiofsdArgs(flavourOf(o.binary), this.socketPath, o.readOnly ? join(dir, 'ro') : o.source);
    let argv = [o.binary, ...args];
    if (o.readOnly) {
      mkdirSync(join(dir, 'ro'), { mode: 0o700 });
      // In the daemon's own mount namespace: the source bind-mounted read-only at dir/ro.
      argv = ['unshare', '--mount', '--propagation', 'private', '--', '/bin/sh', '-c',
        'mount --bind -o ro -- "$1" "$2" || exit 125; shift 2; exec "$@"', 'tsvmm-virtiofsd', o.source, join(dir, 'ro'), ...argv];
    }
    const setpriv = onPath('setpriv');
    if (setpriv) argv = [setpriv, '--pdeathsig', 'SIGKILL', '--', ...argv];
    this.child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    live.add(this.child);
    this.child.stderr!.setEncoding('utf8').on('data', (s: string) => {
      for (const line of s.split('\n')) if (line.trim()) this.stderrTail.push(line.trim());
      this.stderrTail.splice(0, Math.max(0, this.stderrTail.length - 5));
    });
    this.exited = new Promise((resolve) => {
      const done = (why: string) => {
        if (this.exitedAt !== undefined) return;
        live.delete(this.child);
        this.exitedAt = why;
        resolve();
        if (this.up && !this.stopping) this.o.onDeath(this.describe(why));
      };
      this.child.on('exit', (code, sig) => done(sig ? `killed by ${sig}` : `exited with status ${code}`));
      this.child.on('error', (e) => done(`could not start: ${e.message}`));
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  private describe(why: string): string {
    const tail = this.stderrTail.length ? `: ${this.stderrTail.join(' | ')}` : '';
    return `virtiofsd for share ${this.o.label} (pid ${this.child.pid ?? '-'}) ${why}${tail}`;
  }

  /** Starts the daemon and resolves with a connected socket fd once it listens. */
  static async start(o: DaemonOptions): Promise<{ daemon: Virtiofsd; fd: number }> {
    // mkdtemp makes the directory 0700: only this user can reach the socket.
    const dir = mkdtempSync(join(tmpdir(), 'tsvmm-virtiofs-'));
    let d: Virtiofsd | undefined;
    try {
      d = new Virtiofsd(dir, o);
      const fd = await d.connect(o.startTimeoutMs ?? 60_000);
      d.up = true;
      return { daemon: d, fd };
    } catch (e) {
      if (d) await d.stop();
      else rmSync(dir, { recursive: true, force: true });
      throw e;
    }
  }

  private async connect(timeoutMs: number): Promise<number> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      if (this.exitedAt !== undefined) throw new VirtiofsdError(this.describe(this.exitedAt));
      try {
        return connectUnix(this.socketPath);
      } catch (e) {
        const errno = (e as { code?: string }).code;
        if (errno !== 'ENOENT' && errno !== 'ECONNREFUSED') throw e;
      }
      if (Date.now() > until) throw new VirtiofsdError(`virtiofsd for share ${this.o.label} did not listen on ${this.socketPath} within ${timeoutMs / 1000} s`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Stops the daemon (SIGTERM, then SIGKILL after 2 s) and removes its directory. */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.exitedAt === undefined) {
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 2000);
      await this.exited;
      clearTimeout(timer);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
