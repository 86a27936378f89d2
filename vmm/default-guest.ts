// The default guest: Debian's stock kernel plus tsvmm's busybox initramfs, both built and
// cached by tools/guest/*.sh (this module only runs them and reads their results), and the
// host side of the init's contract (tsvmm.cmd=, marker lines; docs/default-guest.md).
// It must not boot anything or know about KVM.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, realpathSync, statSync, utimesSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TsvmmError } from '../lib/errors';
import { cacheDir, fallbackCacheDir } from './cache';

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
 * The name of the manifest tools/guest/build-initramfs.sh leaves beside its image when run from
 * the checkout `root` with `args`: the script computes the same from its physical root and argv.
 */
export function manifestName(root: string, args: readonly string[]): string {
  const key = createHash('sha256').update([realpathSync(root), ...args].map((s) => `${s}\n`).join('')).digest('hex');
  return `manifest-${key.slice(0, 16)}`;
}

export type ManifestCheck = { image: string } | { miss: string };

/** `1796587936.977082350` (stat's %.9Y) in ns; null if it is not that. */
function parseNs(s: string): bigint | null {
  const m = /^(\d+)\.(\d{9})$/.exec(s);
  return m ? BigInt(m[1]!) * 1_000_000_000n + BigInt(m[2]!) : null;
}

/**
 * Whether the image a build-initramfs.sh manifest names is still what the script would return:
 * every recorded input has the same size, mtime and ctime (ns), every recorded absent input is
 * still absent, TSVMM_BUSYBOX is unchanged and the image is there with its size. A few dozen
 * stat() calls; anything unexpected is a miss (the script then decides).
 */
export function checkManifest(path: string): ManifestCheck {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return { miss: 'no manifest' };
  }
  const lines = text.split('\n').filter((l) => l !== '');
  if (lines[0] !== 'tsvmm-initramfs-manifest 1') return { miss: `${path}: not a version 1 manifest` };
  let image: string | null = null;
  let env = false;
  for (const line of lines.slice(1)) {
    let m: RegExpExecArray | null;
    if ((m = /^input (\d+) (\S+) (\S+) (.+)$/.exec(line))) {
      const st = statSync(m[4]!, { bigint: true, throwIfNoEntry: false });
      if (!st) return { miss: `${m[4]} is gone` };
      if (st.size !== BigInt(m[1]!) || st.mtimeNs !== parseNs(m[2]!) || st.ctimeNs !== parseNs(m[3]!)) return { miss: `${m[4]} changed` };
    } else if ((m = /^absent (.+)$/.exec(line))) {
      if (existsSync(m[1]!)) return { miss: `${m[1]} appeared` };
    } else if ((m = /^image (\d+) (.+)$/.exec(line))) {
      const st = statSync(m[2]!, { throwIfNoEntry: false });
      if (!st || st.size !== Number(m[1])) return { miss: `the image ${m[2]} is gone or changed` };
      image = m[2]!;
    } else if ((m = /^env TSVMM_BUSYBOX=(.*)$/.exec(line))) {
      if ((process.env.TSVMM_BUSYBOX ?? '') !== m[1]) return { miss: 'TSVMM_BUSYBOX changed' };
      env = true;
    } else {
      return { miss: `${path}: unknown line '${line.slice(0, 80)}'` };
    }
  }
  if (image === null || !env) return { miss: `${path}: incomplete` };
  return { image };
}

/** Marks a cached image used (its access time, as the script does on a hit) at most once an hour. */
function markUsed(image: string): void {
  try {
    const st = statSync(image);
    if (Date.now() - st.atimeMs > 3600_000) utimesSync(image, new Date(), st.mtime);
  } catch {
    // A read-only cache (the sandbox): nothing to mark, nothing pruned there either.
  }
}

/**
 * tools/guest/build-initramfs.sh of checkout `root` with `args`, without running it when its
 * manifest (in the cache, or the fallback where that is read-only) says nothing changed.
 * `cached`: the manifest answered.
 */
export async function buildInitramfs(root: string, args: readonly string[], log: (msg: string) => void): Promise<{ image: string; cached: boolean }> {
  const name = manifestName(root, args);
  let stale: string | undefined;
  for (const dir of [join(cacheDir(), 'initramfs'), fallbackCacheDir('initramfs')]) {
    const r = checkManifest(join(dir, name));
    if ('image' in r) {
      markUsed(r.image);
      return { image: r.image, cached: true };
    }
    if (r.miss !== 'no manifest') stale ??= r.miss;
  }
  if (stale) log(`initramfs: ${stale}; checking with build-initramfs.sh`);
  const script = join(root, 'tools/guest/build-initramfs.sh');
  const image = await runScript(script, [...args], log);
  if (!image || !existsSync(image)) throw new DefaultGuestError(`build-initramfs.sh ${args.join(' ')} produced no image (${image})`);
  return { image, cached: false };
}

/**
 * Makes sure the default kernel and initramfs exist and are current, and returns them.
 * The kernel is fetched only when none is cached (run tools/guest/fetch-kernel.sh to pick
 * up a newer Debian kernel: resolving the meta package costs ~1 s, too much for every
 * boot). The initramfs script checks its own inputs; its manifest spares running it when
 * nothing changed (buildInitramfs).
 */
export async function ensureDefaultGuest(log: (msg: string) => void = () => {}): Promise<DefaultGuest> {
  const root = projectRoot();
  const recordPath = join(cacheDir(), 'kernel/kernel.json');
  let record = readKernelRecord(recordPath);
  if (!record) {
    await runScript(join(root, 'tools/guest/fetch-kernel.sh'), [], log);
    record = readKernelRecord(recordPath);
    if (!record) throw new DefaultGuestError(`fetch-kernel.sh left no usable record at ${recordPath}`);
  }
  const { image: initrd } = await buildInitramfs(root, [], log);
  return { kernel: record.kernel, vmlinux: record.vmlinux, initrd, version: record.version, modulesDir: record.modulesDir };
}

/**
 * The agent's initramfs for another kernel (`--kernel` without `--initrd`): the default guest's
 * init, busybox and guest programs, with the modules of tools/guest/modules.txt taken from
 * `modulesDir` (a depmod'ed lib/modules/<release>), or none when the kernel has them built in.
 * Built by tools/guest/build-initramfs.sh and cached by the hash of its inputs (and its manifest).
 */
export async function ensureAgentImage(release: string, modulesDir: string | undefined, log: (msg: string) => void = () => {}): Promise<string> {
  const args = ['--kver', release, ...(modulesDir ? ['--moddir', modulesDir] : [])];
  return (await buildInitramfs(projectRoot(), args, log)).image;
}
