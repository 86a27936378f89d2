// The default guest: Debian's stock kernel plus tsvmm's busybox initramfs, both built and
// cached by tools/guest/*.sh (this module only runs them and reads their results), and the
// host side of the init's contract (tsvmm.cmd=, marker lines; docs/default-guest.md).
// It must not boot anything or know about KVM.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TsvmmError } from '../lib/errors';
import { cacheDir } from './cache';

export interface DefaultGuest {
  /** bzImage of the Debian kernel. */
  kernel: string;
  /** The same kernel as an ELF (PVH entry), unpacked from the bzImage; null if that failed. */
  vmlinux: string | null;
  /** gzip'd cpio: busybox, /init, the device modules, guest/build/* in /usr/bin. */
  initrd: string;
  /** Kernel release, e.g. `6.1.0-57-amd64`. */
  version: string;
  /** The kernel's `lib/modules/<version>` directory (depmod'ed). */
  modulesDir: string;
}

export class DefaultGuestError extends TsvmmError {}

/** Lines the default init prints on the console. */
export const INIT_READY_MARKER = 'tsvmm-init: ready';

export type InitMarker =
  | { kind: 'ready' }
  | { kind: 'info'; cpus: number; memKb: number }
  | { kind: 'exit'; status: number };

/** Recognises one console line of the default init; anything else is null. */
export function parseInitMarker(line: string): InitMarker | null {
  const l = line.trim();
  if (l === INIT_READY_MARKER) return { kind: 'ready' };
  let m = /^tsvmm-init: exit=(\d+)$/.exec(l);
  if (m) return { kind: 'exit', status: Number(m[1]) };
  m = /^tsvmm-init: cpus=(\d+) mem_kb=(\d+)$/.exec(l);
  if (m) return { kind: 'info', cpus: Number(m[1]), memKb: Number(m[2]) };
  return null;
}

// x86 COMMAND_LINE_SIZE is 2048 bytes for the whole command line; leave room for the rest.
const MAX_CMD_FRAGMENT = 1536;

/**
 * The kernel command line fragment that makes the default init run `cmd` with `sh -c`,
 * print `tsvmm-init: exit=<status>` and power off. Base64 keeps spaces and quotes out of
 * the kernel's own parameter parsing.
 */
export function encodeGuestCommand(cmd: string): string {
  const fragment = `tsvmm.cmd=${Buffer.from(cmd, 'utf8').toString('base64')}`;
  if (fragment.length > MAX_CMD_FRAGMENT) {
    throw new DefaultGuestError(
      `guest command too long: ${fragment.length} bytes encoded, the kernel command line allows ${MAX_CMD_FRAGMENT} for it`,
    );
  }
  return fragment;
}

/** The checkout's root: the nearest ancestor of this (possibly bundled) file with tools/guest. */
export function projectRoot(from: string = dirname(fileURLToPath(import.meta.url))): string {
  for (let dir = from; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'tools/guest/build-initramfs.sh'))) return dir;
    if (dirname(dir) === dir) throw new DefaultGuestError(`no tools/guest/ above ${from}`);
  }
}

interface KernelRecord {
  version: string;
  kernel: string;
  vmlinux: string | null;
  modulesDir: string;
}

function readKernelRecord(path: string): KernelRecord | null {
  if (!existsSync(path)) return null;
  const r = JSON.parse(readFileSync(path, 'utf8')) as Partial<KernelRecord>;
  if (typeof r.version !== 'string' || typeof r.kernel !== 'string' || typeof r.modulesDir !== 'string') return null;
  if (!existsSync(r.kernel) || !existsSync(join(r.modulesDir, 'modules.dep'))) return null;
  const vmlinux = typeof r.vmlinux === 'string' && r.vmlinux !== '' && existsSync(r.vmlinux) ? r.vmlinux : null;
  return { version: r.version, kernel: r.kernel, vmlinux, modulesDir: r.modulesDir };
}

/** Runs a tools script; stderr goes to `log` line by line, stdout's last line is returned. */
function runScript(script: string, args: string[], log: (msg: string) => void): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(script, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let errTail = '';
    let partial = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      const lines = (partial + d).split('\n');
      partial = lines.pop() ?? '';
      for (const l of lines) log(l);
      errTail = (errTail + d).slice(-2000);
    });
    child.on('error', (e) => reject(new DefaultGuestError(`cannot run ${script}: ${e.message}`)));
    child.on('close', (code, signal) => {
      if (partial) log(partial);
      if (code === 0) return resolve(out.trim().split('\n').pop() ?? '');
      const why = signal ? `killed by ${signal}` : `exit status ${code}`;
      reject(new DefaultGuestError(`${script} failed (${why}): ${errTail.trim().split('\n').pop() ?? ''}`));
    });
  });
}

/**
 * Makes sure the default kernel and initramfs exist and are current, and returns them.
 * The kernel is fetched only when none is cached (run tools/guest/fetch-kernel.sh to pick
 * up a newer Debian kernel: resolving the meta package costs ~1 s, too much for every
 * boot). The initramfs script checks its own inputs and is cheap when nothing changed.
 */
export async function ensureDefaultGuest(log: (msg: string) => void = () => {}): Promise<DefaultGuest> {
  const tools = join(projectRoot(), 'tools/guest');
  const recordPath = join(cacheDir(), 'kernel/kernel.json');
  let record = readKernelRecord(recordPath);
  if (!record) {
    await runScript(join(tools, 'fetch-kernel.sh'), [], log);
    record = readKernelRecord(recordPath);
    if (!record) throw new DefaultGuestError(`fetch-kernel.sh left no usable record at ${recordPath}`);
  }
  const initrd = await runScript(join(tools, 'build-initramfs.sh'), [], log);
  if (!initrd || !existsSync(initrd)) throw new DefaultGuestError(`build-initramfs.sh produced no image (${initrd})`);
  return { kernel: record.kernel, vmlinux: record.vmlinux, initrd, version: record.version, modulesDir: record.modulesDir };
}

/**
 * The agent's initramfs for another kernel (`--kernel` without `--initrd`): the default guest's
 * init, busybox and guest programs, with the modules of tools/guest/modules.txt taken from
 * `modulesDir` (a depmod'ed lib/modules/<release>), or none when the kernel has them built in.
 * Built by tools/guest/build-initramfs.sh and cached by the hash of its inputs.
 */
export async function ensureAgentImage(release: string, modulesDir: string | undefined, log: (msg: string) => void = () => {}): Promise<string> {
  const args = ['--kver', release, ...(modulesDir ? ['--moddir', modulesDir] : [])];
  const initrd = await runScript(join(projectRoot(), 'tools/guest/build-initramfs.sh'), args, log);
  if (!initrd || !existsSync(initrd)) throw new DefaultGuestError(`build-initramfs.sh produced no image for ${release} (${initrd})`);
  return initrd;
}
