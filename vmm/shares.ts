// Host directories in the guest (virtio-fs): `--share HOST_DIR:GUEST_DIR[,ro]` and
// `--rootfs host`, turned into share configurations, their checks, and the kernel command line
// words the default init reads to mount them (tools/guest/init.sh, docs/default-guest.md).
// Owns those formats; the devices and daemons are devices/virtio/fs/'s, the wiring machine.ts's.

import { statSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { ConfigError } from './config';
import { UsageError } from '../lib/errors';

export interface ShareConfig {
  /** Absolute host directory served by virtiofsd. */
  hostDir: string;
  /** Where the guest mounts it ('/' for --rootfs host). */
  guestDir: string;
  readOnly: boolean;
  /** virtio-fs mount tag (the device's config space). */
  tag: string;
  /** The guest's root filesystem (--rootfs host): read-only, with tmpfs where programs write. */
  root?: boolean;
}

/** Virtio-mmio slots are few and each share is a daemon: a bound on both. */
export const MAX_SHARES = 8;
/** What a guest path may contain: it travels on the kernel command line, unquoted. */
const GUEST_PATH = /^\/[A-Za-z0-9._/+@-]*$/;

export const shareTag = (i: number): string => `tsvmmfs${i}`;

/** Why `guestDir` cannot be a share's guest directory, or undefined when it can. */
export function badGuestDir(guestDir: string): string | undefined {
  if (!GUEST_PATH.test(guestDir) || guestDir.split('/').includes('..') || guestDir === '/') {
    return 'the guest directory must be an absolute path other than / made of letters, digits and . _ / + @ -';
  }
  return undefined;
}

/** `HOST_DIR:GUEST_DIR[,ro]` (split at the last colon: host paths may hold colons). */
export function parseShare(spec: string, index: number): ShareConfig {
  let s = spec;
  let readOnly = false;
  if (s.endsWith(',ro')) {
    readOnly = true;
    s = s.slice(0, -3);
  } else if (s.endsWith(',rw')) {
    s = s.slice(0, -3);
  }
  const i = s.lastIndexOf(':');
  if (i <= 0 || i === s.length - 1) throw new UsageError(`--share '${spec}' must be HOST_DIR:GUEST_DIR[,ro]`);
  const guestDir = s.slice(i + 1);
  const bad = badGuestDir(guestDir);
  if (bad) throw new UsageError(`--share '${spec}': ${bad}`);
  return { hostDir: resolve(s.slice(0, i)), guestDir: guestDir.replace(/\/+$/, ''), readOnly, tag: shareTag(index) };
}

/** `--rootfs host`: the host's / as the guest's, read-only. */
export function parseRootfs(v: string | undefined, index: number): ShareConfig | undefined {
  if (v === undefined) return undefined;
  if (v !== 'host') throw new UsageError(`--rootfs '${v}' must be 'host'`);
  return { hostDir: '/', guestDir: '/', readOnly: true, tag: shareTag(index), root: true };
}

/** The shares the flags describe: --share in order, then --rootfs host. */
export function sharesFromFlags(share: readonly string[] | undefined, rootfs: string | undefined): ShareConfig[] {
  const out = (share ?? []).map((s, i) => parseShare(s, i));
  const root = parseRootfs(rootfs, out.length);
  if (root) out.push(root);
  return out;
}

export function validateShares(shares: readonly ShareConfig[]): void {
  if (shares.length > MAX_SHARES) throw new ConfigError(`${shares.length} shares: at most ${MAX_SHARES}`);
  const seen = new Set<string>();
  for (const s of shares) {
    if (!isAbsolute(s.hostDir)) throw new ConfigError(`share ${s.hostDir}: the host directory must be an absolute path`);
    let dir = false;
    try {
      dir = statSync(s.hostDir).isDirectory();
    } catch {
      throw new ConfigError(`share ${s.hostDir}: no such directory`);
    }
    if (!dir) throw new ConfigError(`share ${s.hostDir}: not a directory`);
    if (seen.has(s.guestDir)) throw new ConfigError(`two shares mount at ${s.guestDir}`);
    seen.add(s.guestDir);
  }
  if (shares.filter((s) => s.root).length > 1) throw new ConfigError('--rootfs host given twice');
  if (shares.some((s) => s.root)) {
    // The guest mounts the others inside the host's read-only root: it can make a directory
    // only on one of its tmpfs.
    for (const s of shares) {
      if (s.root || ROOT_TMPFS.some((d) => under(s.guestDir, d) !== undefined) || isDirectory(s.guestDir)) continue;
      throw new ConfigError(`share ${s.hostDir}:${s.guestDir}: with --rootfs host the guest directory must exist on the host (the guest's / is the host's, read-only) or lie under ${ROOT_TMPFS.join(', ')}`);
    }
  }
}

function isDirectory(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/**
 * The words for the default init: `tsvmm.share=TAG:GUEST_DIR[:ro]` per share and
 * `tsvmm.rootfs=TAG` for the root. A word the init does not know is ignored by the kernel.
 */
export function sharesCmdline(shares: readonly ShareConfig[]): string {
  return shares.map((s) => (s.root ? `tsvmm.rootfs=${s.tag}` : `tsvmm.share=${s.tag}:${s.guestDir}${s.readOnly ? ':ro' : ''}`)).join(' ');
}

/** Where the guest mounts a writable tmpfs over the root share (tools/guest/init.sh). */
const ROOT_TMPFS = ['/tmp', '/run', '/var/tmp', '/root'];
/** Where the root share does not show the host's files: the guest mounts its own there. */
const ROOT_HIDDEN = [...ROOT_TMPFS, '/proc', '/sys', '/dev'];

const under = (p: string, dir: string): string | undefined =>
  p === dir ? '' : dir === '/' ? p.slice(1) : p.startsWith(`${dir}/`) ? p.slice(dir.length + 1) : undefined;

/**
 * Where host path `p` (absolute) appears in the guest, or undefined: inside a --share its guest
 * directory, else through --rootfs host at the same path unless a guest tmpfs hides it. The
 * root share is a non-recursive bind mount, so a path on another host file system is not
 * visible through it; this answers for the common case of one root file system.
 */
export function guestPathOf(p: string, shares: readonly ShareConfig[]): string | undefined {
  for (const s of shares) {
    if (s.root) continue;
    const rest = under(p, s.hostDir);
    if (rest !== undefined) return rest ? `${s.guestDir}/${rest}` : s.guestDir;
  }
  if (shares.some((s) => s.root) && !ROOT_HIDDEN.some((d) => under(p, d) !== undefined)) return p;
  return undefined;
}
