// Unix socket files tsvmm binds (the vsock `uds_path`, the API socket): what such a path may
// be, when a leftover one may be replaced, and removing only the file we created. The rule is
// that tsvmm never deletes what is not its own: a path must be absent, or a socket of this user
// that nobody listens on (left by a crashed run); at exit the path is removed only while it is
// still the very socket we bound (same device and inode), not one another instance put there.
// Owns those checks only; binding is the callers' business.

import { accessSync, closeSync, constants, lstatSync, openSync, statSync, unlinkSync, type Stats } from 'node:fs';
import { chmod, link, mkdtemp, rmdir, unlink } from 'node:fs/promises';
import { connect, type Server } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { TsvmmError } from '../lib/errors';

/**
 * sun_path is 108 bytes including the NUL. libuv does not refuse a longer path: it silently
 * binds or connects to its first 107 bytes (measured on Node 20), which can be another socket.
 */
export const SUN_PATH_MAX = 107;

function errno(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? (e as Error).message;
}

/**
 * Why `path` cannot be bound by this user, or undefined when it can: it must fit sun_path with
 * `reserve` bytes to spare (vsock appends `_<port>`), its directory must exist and be writable,
 * and the path itself must be absent or a socket this user owns (checked again at bind time).
 */
export function socketPathProblem(path: string, reserve = 0): string | undefined {
  const bytes = Buffer.byteLength(path);
  if (path.includes('\0')) return 'contains a NUL byte';
  if (bytes + reserve > SUN_PATH_MAX) {
    return `is ${bytes} bytes; at most ${SUN_PATH_MAX - reserve} fit a Unix socket address${reserve ? ` (with the ${reserve}-byte "_<port>" suffix)` : ''}`;
  }
  const dir = dirname(resolve(path));
  try {
    if (!statSync(dir).isDirectory()) return `is in ${dir}, which is not a directory`;
    accessSync(dir, constants.W_OK | constants.X_OK);
  } catch {
    return `is in directory ${dir}, which is missing or not writable`;
  }
  let st: Stats;
  try {
    st = lstatSync(path);
  } catch (e) {
    return errno(e) === 'ENOENT' ? undefined : `cannot be inspected: ${errno(e)}`;
  }
  return ownSocketProblem(st);
}

/** Why an existing file is not a socket of ours (undefined when it is). */
function ownSocketProblem(st: Stats): string | undefined {
  if (!st.isSocket()) return 'exists and is not a socket';
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid) return `is a socket of user ${st.uid}, not ours`;
  return undefined;
}

/**
 * Whether the file at `path` may be replaced: undefined when it is a socket of this user that
 * refuses connections (ECONNREFUSED: nobody listens), else why not. A socket that answers, or
 * fails any other way (EAGAIN: a full backlog, EACCES), belongs to someone alive.
 */
export async function staleSocketProblem(path: string): Promise<string | undefined> {
  let st: Stats;
  try {
    st = lstatSync(path);
  } catch (e) {
    return `cannot be inspected: ${errno(e)}`;
  }
  const notOurs = ownSocketProblem(st);
  if (notOurs) return notOurs;
  return new Promise((done) => {
    const c = connect({ path });
    c.once('connect', () => {
      c.destroy();
      done('is live: another process is serving on this socket');
    });
    c.once('error', (e: NodeJS.ErrnoException) => done(e.code === 'ECONNREFUSED' ? undefined : `may be in use (connect: ${e.code ?? e.message})`));
  });
}

export class SocketPathError extends TsvmmError {}

/**
 * Makes `server` listen at `path`, owner-only, never replacing anything but a stale socket of
 * ours. The socket is bound inside a fresh 0700 directory next to `path`, chmod'ed, then
 * hard-linked into place: it is never reachable with wider permissions, and an existing path
 * is never silently replaced. The bind goes through /proc/self/fd/<dir>, so the temporary name
 * is short whatever the directory's length. libuv unlinks the name a server was bound to when
 * it closes; that name is the temporary one, inside a directory removed here, so the close
 * cannot remove `path` (which may by then be another instance's socket).
 */
export async function listenOwned(server: Server, path: string): Promise<OwnSocket> {
  const problem = socketPathProblem(path);
  if (problem) throw new SocketPathError(problem);
  let dir: string;
  try {
    dir = await mkdtemp(join(dirname(path), '.tsvmm-'));
  } catch (e) {
    throw new SocketPathError(`cannot be bound: no temporary directory beside it (${errno(e)})`);
  }
  let dirFd: number | undefined;
  const tmp = join(dir, 's');
  try {
    dirFd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
    const short = `/proc/self/fd/${dirFd}/s`;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(short, () => {
        server.off('error', reject);
        resolve();
      });
    });
    await chmod(tmp, 0o600);
    try {
      await link(tmp, path);
    } catch (e) {
      if (errno(e) !== 'EEXIST') throw e;
      const busy = await staleSocketProblem(path);
      if (busy) throw new SocketPathError(busy);
      await unlink(path);
      await link(tmp, path);
    }
    const own = new OwnSocket(path, dirFd);
    dirFd = undefined;
    return own;
  } catch (e) {
    server.close();
    throw e instanceof SocketPathError ? e : new SocketPathError(errno(e));
  } finally {
    // The fd stays with the OwnSocket while the server lives: the name libuv will unlink at
    // close then resolves inside this removed directory, never through a reused fd number.
    if (dirFd !== undefined) closeSync(dirFd);
    await unlink(tmp).catch(() => {});
    await rmdir(dir).catch(() => {});
  }
}

/** A socket file this process created: removed only while it is still that file. */
export class OwnSocket {
  private readonly dev: number;
  private readonly ino: number;

  /**
   * Records the socket just bound at `path`; `dirFd` is released by release(). `known`: the
   * device and inode it was bound as (the thread that bound it told us), not looked up again.
   */
  constructor(readonly path: string, private dirFd?: number, known?: { dev: number; ino: number }) {
    const st = known ?? lstatSync(path);
    this.dev = st.dev;
    this.ino = st.ino;
  }

  /** The device and inode of the socket we bound. */
  identity(): { dev: number; ino: number } {
    return { dev: this.dev, ino: this.ino };
  }

  /** After the server closed: lets go of the temporary directory's fd. */
  release(): void {
    if (this.dirFd !== undefined) closeSync(this.dirFd);
    this.dirFd = undefined;
  }

  /** Whether `path` is still the socket we bound. */
  isOurs(): boolean {
    try {
      const st = lstatSync(this.path);
      return st.dev === this.dev && st.ino === this.ino;
    } catch {
      return false;
    }
  }

  /** Unlinks `path` if it is still ours; true when it did. */
  remove(): boolean {
    if (!this.isOurs()) return false;
    try {
      unlinkSync(this.path);
      return true;
    } catch {
      return false;
    }
  }
}
