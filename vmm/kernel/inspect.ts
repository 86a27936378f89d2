// What tsvmm can learn about a guest kernel before booting it: which file to boot (`--kernel`
// names an image or a kernel build tree), its release as the image states it, its
// configuration (a build tree's .config, `config-<release>` beside the image, or the
// configuration built into the kernel with CONFIG_IKCONFIG), and its modules (`--modules DIR`,
// or a build tree's modules.order), depmod'ed where they are not yet. Owns finding and reading
// those; the rules about what a kernel needs are ./requirements'.
//
// IKCONFIG is found the way the kernel's scripts/extract-ikconfig finds it: kernel/configs.c
// puts the gzip'd .config between the markers "IKCFG_ST" and "IKCFG_ED" in the kernel (or in
// configs.ko when CONFIG_IKCONFIG=m); the bytes between them are one gzip stream, which
// node:zlib inflates. Compressed modules are decompressed with Debian's xz/zstd/gzip.

import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { createHash } from 'node:crypto';
import { gunzipSync } from 'node:zlib';
import { TsvmmError } from '../../lib/errors';
import { BootParams, HDRS_MAGIC, SetupHeader } from '../boot/setup-header';
import { writableCacheDir } from '../cache';
import { parseKernelConfig, type ModuleSet } from './requirements';

export class KernelLookupError extends TsvmmError {}

export interface KernelSource {
  /** The image tsvmm boots (a bzImage or an ELF vmlinux). */
  image: string;
  /** The build tree `--kernel DIR` named, when it named one. */
  tree?: string;
}

/** Images of a build tree, in the order tsvmm prefers them. */
const TREE_IMAGES = ['arch/x86/boot/bzImage', 'vmlinux'];

/** `--kernel PATH`: an image file, or a kernel build tree holding one. */
export function locateKernel(path: string): KernelSource {
  let st;
  try {
    st = statSync(path);
  } catch (e) {
    throw new KernelLookupError(`--kernel ${path}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file or directory' : (e as Error).message}`);
  }
  if (!st.isDirectory()) return { image: path };
  const tree = resolve(path);
  for (const rel of TREE_IMAGES) {
    if (existsSync(join(tree, rel))) return { image: join(tree, rel), tree };
  }
  throw new KernelLookupError(`--kernel ${path} is a directory without a built kernel (no ${TREE_IMAGES.join(' or ')}; run make first)`);
}

const CHUNK = 4 << 20;

/** Offset of the first `needle` in the file at or after `from`, or -1; reads in chunks. */
function findInFile(fd: number, needle: Buffer, from = 0): number {
  const buf = Buffer.allocUnsafe(CHUNK);
  for (let pos = from; ; ) {
    const n = readSync(fd, buf, 0, CHUNK, pos);
    if (n < needle.length) return -1;
    const at = buf.subarray(0, n).indexOf(needle);
    if (at >= 0) return pos + at;
    // The next chunk starts early enough to catch a needle cut at this chunk's end.
    pos += n - (needle.length - 1);
  }
}

function readAt(fd: number, offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  const n = readSync(fd, b, 0, length, offset);
  return b.subarray(0, n);
}

/** The text up to the first NUL (or `max` bytes). */
function cString(b: Buffer, max = 256): string {
  const end = b.indexOf(0);
  return b.subarray(0, end < 0 ? Math.min(b.length, max) : Math.min(end, max)).toString('latin1');
}

export interface KernelRelease {
  /** `uname -r` of the kernel, e.g. 6.12.118+deb12-cloud-amd64. */
  release: string;
  /** The whole version string, when the image has one (`… (gcc …) #1 SMP …`). */
  banner: string;
}

/**
 * The release the image states: a bzImage's setup header points at its version string
 * (kernel_version, boot protocol 2.00+); an ELF vmlinux carries the banner the kernel prints
 * first ("Linux version <release> …"). Undefined when the image has neither.
 */
export function kernelRelease(image: string): KernelRelease | undefined {
  const fd = openSync(image, 'r');
  try {
    const head = readAt(fd, 0, 0x1000);
    const hdr = BootParams.offsets.hdr;
    if (head.length >= hdr + SetupHeader.size && head.readUInt32LE(hdr + SetupHeader.offsets.header) === HDRS_MAGIC) {
      const ptr = head.readUInt16LE(hdr + SetupHeader.offsets.kernelVersion);
      if (ptr === 0) return undefined;
      const banner = cString(readAt(fd, ptr + 0x200, 256));
      const release = banner.split(' ')[0] ?? '';
      return /^\d+\.\d+/.test(release) ? { release, banner } : undefined;
    }
    const marker = Buffer.from('Linux version ');
    for (let at = findInFile(fd, marker); at >= 0; at = findInFile(fd, marker, at + 1)) {
      const banner = cString(readAt(fd, at, 512), 512).trimEnd();
      const release = banner.slice(marker.length).split(' ')[0] ?? '';
      // linux_banner; format strings ("Linux version %s") and the like are skipped.
      if (/^\d+\.\d+[^\s]*$/.test(release)) return { release, banner: banner.slice(marker.length) };
    }
    return undefined;
  } finally {
    closeSync(fd);
  }
}

const IKCFG_START = Buffer.from('IKCFG_ST');
const IKCFG_END = Buffer.from('IKCFG_ED');

/** The configuration built into a vmlinux or configs.ko (CONFIG_IKCONFIG), or undefined. */
export function extractIkconfig(bytes: Uint8Array): string | undefined {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let at = b.indexOf(IKCFG_START); at >= 0; at = b.indexOf(IKCFG_START, at + 1)) {
    const start = at + IKCFG_START.length;
    if (b[start] !== 0x1f || b[start + 1] !== 0x8b) continue; // the marker as text elsewhere
    const end = b.indexOf(IKCFG_END, start);
    if (end < 0) return undefined;
    return gunzipSync(b.subarray(start, end)).toString('utf8');
  }
  return undefined;
}

/** A module file's bytes, decompressed by the Debian tool for its suffix. */
function readModule(path: string): Buffer {
  const tool = path.endsWith('.xz') ? ['xz', '-dc'] : path.endsWith('.zst') ? ['zstd', '-dcq'] : path.endsWith('.gz') ? ['gzip', '-dc'] : undefined;
  return tool ? execFileSync(tool[0]!, [...tool.slice(1), path], { maxBuffer: 1 << 28 }) : readFileSync(path);
}

export interface KernelConfig {
  /** Where it was read: a file, or `IKCONFIG in <file>`. */
  source: string;
  options: Map<string, string>;
}

/** The kernel's configuration as a file, the first of its build tree's .config and config-<release> beside the image that exists. */
export function kernelConfigFile(k: KernelSource, release: string | undefined): string | undefined {
  const files = [
    ...(k.tree ? [join(k.tree, '.config')] : []),
    ...(release ? [join(dirname(k.image), `config-${release}`)] : []),
  ];
  return files.find((f) => existsSync(f));
}

/**
 * The kernel's configuration: the build tree's .config, `config-<release>` beside the image
 * (Debian's /boot layout), or IKCONFIG in an ELF image or in the modules' configs.ko.
 * Undefined when none of them is there. A bzImage's embedded IKCONFIG would need its payload
 * decompressed first; it is not read.
 */
export function findKernelConfig(k: KernelSource, release: string | undefined, modulesDir?: string): KernelConfig | undefined {
  const file = kernelConfigFile(k, release);
  if (file) return { source: file, options: parseKernelConfig(readFileSync(file, 'utf8')) };
  const fromImage = readFileSync(k.image);
  if (fromImage.subarray(0, 4).toString('latin1') === '\x7fELF') {
    const text = extractIkconfig(fromImage);
    if (text !== undefined) return { source: `IKCONFIG in ${k.image}`, options: parseKernelConfig(text) };
  }
  if (modulesDir) {
    for (const suffix of ['', '.xz', '.zst', '.gz']) {
      const ko = join(modulesDir, `kernel/kernel/configs.ko${suffix}`);
      if (!existsSync(ko)) continue;
      const text = extractIkconfig(readModule(ko));
      if (text !== undefined) return { source: `IKCONFIG in ${ko}`, options: parseKernelConfig(text) };
    }
  }
  return undefined;
}

export interface KernelModules extends ModuleSet {
  /** A depmod'ed lib/modules/<release> directory. */
  dir: string;
}

const MODULE_FILE = /\.ko(\.xz|\.zst|\.gz)?$/;
const moduleName = (path: string) => basename(path).replace(MODULE_FILE, '').replaceAll('-', '_');

/** Module names of a depmod'ed tree: those modules.dep lists and those built in. */
function moduleNames(dir: string): Set<string> {
  const names = new Set<string>();
  for (const line of readFileSync(join(dir, 'modules.dep'), 'utf8').split('\n')) {
    const colon = line.indexOf(':');
    if (colon > 0) names.add(moduleName(line.slice(0, colon)));
  }
  if (existsSync(join(dir, 'modules.builtin'))) {
    for (const line of readFileSync(join(dir, 'modules.builtin'), 'utf8').split('\n')) if (line) names.add(moduleName(line));
  }
  return names;
}

/**
 * A depmod'ed copy (links to the module files) of modules that have no modules.dep yet: a
 * build tree's (modules.order names them, as `.o` since Linux 6.2, `.ko` before) or a
 * lib/modules tree installed without depmod. Built once per set of inputs in the writable
 * cache; depmod (kmod) does the resolving.
 */
function stageModules(release: string, files: { rel: string; path: string }[], extra: { name: string; path: string }[]): string {
  const h = createHash('sha256').update(release);
  for (const f of files) h.update(`${f.rel}\0${f.path}\0${statSync(f.path).mtimeMs}\0`);
  const base = join(writableCacheDir('modules'), h.digest('hex').slice(0, 16));
  const dir = join(base, 'lib/modules', release);
  if (existsSync(join(dir, 'modules.dep'))) return dir;
  const tmp = `${base}.${process.pid}.tmp`;
  rmSync(tmp, { recursive: true, force: true });
  const tdir = join(tmp, 'lib/modules', release);
  for (const f of files) {
    mkdirSync(dirname(join(tdir, f.rel)), { recursive: true });
    symlinkSync(resolve(f.path), join(tdir, f.rel));
  }
  mkdirSync(tdir, { recursive: true });
  writeFileSync(join(tdir, 'modules.order'), files.map((f) => f.rel).join('\n') + '\n');
  for (const e of extra) if (existsSync(e.path)) writeFileSync(join(tdir, e.name), readFileSync(e.path));
  try {
    execFileSync('depmod', ['-b', tmp, release], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw new KernelLookupError(`depmod of the modules for ${release} failed: ${String((e as { stderr?: Buffer }).stderr ?? (e as Error).message).trim()} (depmod is in Debian's kmod)`);
  }
  rmSync(base, { recursive: true, force: true });
  renameSync(tmp, base);
  return dir;
}

function walkModules(root: string, rel = ''): { rel: string; path: string }[] {
  const out: { rel: string; path: string }[] = [];
  for (const e of readdirSync(join(root, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...walkModules(root, r));
    else if (MODULE_FILE.test(e.name)) out.push({ rel: r, path: join(root, r) });
  }
  return out;
}

/**
 * The kernel's modules: `--modules DIR` (a lib/modules/<release> tree, or the root it was
 * installed under, INSTALL_MOD_PATH), or the build tree's own modules. Undefined when there
 * are none: what the kernel needs must then be built in.
 */
export function kernelModules(o: { modules?: string; tree?: string; release?: string }): KernelModules | undefined {
  if (o.modules !== undefined) {
    let dir = resolve(o.modules);
    if (!existsSync(dir) || !lstatSync(dir).isDirectory()) throw new KernelLookupError(`--modules ${o.modules}: not a directory`);
    if (o.release && existsSync(join(dir, 'lib/modules', o.release))) dir = join(dir, 'lib/modules', o.release);
    const named = basename(dir);
    if (o.release && named !== o.release && /^\d+\.\d+/.test(named)) {
      throw new KernelLookupError(`--modules ${o.modules} holds modules for ${named}, but the kernel is ${o.release} (the kernel refuses modules of another release)`);
    }
    const release = o.release ?? named;
    if (existsSync(join(dir, 'modules.dep'))) return { dir, source: dir, names: moduleNames(dir) };
    const files = walkModules(dir);
    if (files.length === 0) throw new KernelLookupError(`--modules ${o.modules}: no kernel modules (*.ko) in it`);
    const staged = stageModules(release, files, [{ name: 'modules.builtin', path: join(dir, 'modules.builtin') }]);
    return { dir: staged, source: dir, names: moduleNames(staged) };
  }
  if (o.tree && existsSync(join(o.tree, 'modules.order'))) {
    if (!o.release) throw new KernelLookupError(`${o.tree}: cannot tell the kernel's release from its image, so its modules cannot be used`);
    const tree = o.tree;
    const files = readFileSync(join(tree, 'modules.order'), 'utf8').split('\n').filter(Boolean).map((l) => {
      const ko = l.replace(/\.o$/, '.ko');
      return { rel: `kernel/${ko}`, path: join(tree, ko) };
    });
    const absent = files.filter((f) => !existsSync(f.path));
    if (absent.length) throw new KernelLookupError(`${tree}: modules.order names ${absent.length} module(s) that are not built (${absent[0]!.path}); run make modules`);
    if (files.length === 0) return undefined;
    const staged = stageModules(o.release, files, [{ name: 'modules.builtin', path: join(tree, 'modules.builtin') }]);
    return { dir: staged, source: `${tree} (modules.order)`, names: moduleNames(staged) };
  }
  return undefined;
}
