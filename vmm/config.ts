// A machine's configuration and its validation: sizes, counts and paths, checked before any
// KVM object exists so that bad input fails with one clear line and nothing to clean up. Every
// door (flag, config file, API) goes through validateConfig.

import { readFileSync } from 'node:fs';
import { MiB } from './layout';
import { validateVsockSpec } from '../devices/virtio/vsock/spec';
import { orderDrives, validateDriveSpec, type DriveSpec } from '../devices/virtio/block/spec';
import type { RateLimiterSpec, TokenBucketSpec } from '../devices/rate-limiter';
import { TsvmmError } from '../lib/errors';
import { validateShares, type ShareConfig } from './shares';

export class ConfigError extends TsvmmError {}

export interface MachineConfig {
  kernel: string;
  initrd?: string;
  /**
   * Boot a bzImage through its vmlinux, unpacked on the host once and cached (vmm/boot/unpack.ts);
   * default true. false (`--no-unpack`) keeps the kernel's own decompressor, and with it KASLR.
   */
  unpack?: boolean;
  cmdline: string;
  vcpus: number;
  /** Bytes of guest RAM. */
  memory: number;
  /** Describe devices with ACPI (default), or only on the command line (`--no-acpi`). */
  acpi: boolean;
  vsock?: { cid: number; udsPath: string };
  /** virtio-blk drives in the order the guest names them (vda, vdb, …); a root drive comes first. */
  drives?: DriveSpec[];
  /** virtio-rng: present unless false (`--no-rng`); its rate limiter (default: devices/virtio/rng DEFAULT_RNG_LIMIT). */
  rng?: false | { rateLimiter?: RateLimiterSpec };
  /** vCPU pinning policy (vmm/scheduler); `hinted` follows the guest's affinity hints. */
  pin: 'none' | 'static' | 'hinted';
  /** Host CPU pool, CPU list syntax (default: this process's allowed CPUs). */
  hostCpus?: string;
  /** vCPU thread priority from guest real-time tasks (vmm/scheduler/prio.ts); default none. */
  prio?: 'none' | 'hinted';
  /** Highest SCHED_FIFO priority `prio` gives a vCPU thread (1..99, default 10). */
  prioMax?: number;
  /** Host directories served over virtio-fs (vmm/shares.ts), each by its own virtiofsd. */
  shares?: ShareConfig[];
  /** The virtiofsd binary (found when the config is made, so a missing one fails before boot). */
  virtiofsd?: string;
}

export const DEFAULT_MEMORY = 256 * MiB;
export const MIN_MEMORY = 32 * MiB;
export const DEFAULT_CMDLINE = 'console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd';
/**
 * What `exec` and the library add after DEFAULT_CMDLINE unless asked for a verbose console
 * (`--verbose-console`, `verboseConsole`) or given a `--cmdline` of their own: the console
 * prints warnings and worse (levels 0-4; the agent logs its warnings at 4), not the ~265
 * routine lines of a boot. Their users want the command's output and a fast boot, as vng's
 * (quiet unless --verbose); every line of the log costs port exits in the UART, a cost the
 * nested sandbox's emulated SVM does not always survive (docs/testing.md). `dmesg` in the
 * guest still has them all, and an `--append loglevel=7` (after this) brings them back.
 */
export const QUIET_CONSOLE = 'loglevel=5';

/** "512M", "2G", "1024K", "268435456" (bytes) → bytes. */
export function parseSize(text: string): number {
  const m = /^(\d+)([KMG]i?B?)?$/i.exec(text.trim());
  if (!m) throw new ConfigError(`invalid size '${text}' (use e.g. 512M or 2G)`);
  const unit = (m[2] ?? '').charAt(0).toUpperCase();
  const mult = unit === 'K' ? 1024 : unit === 'M' ? MiB : unit === 'G' ? 1024 * MiB : 1;
  const bytes = Number(m[1]) * mult;
  if (!Number.isSafeInteger(bytes)) throw new ConfigError(`size '${text}' is too large`);
  return bytes;
}

export function hostMemory(): number {
  const m = /^MemTotal:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) * 1024 : Number.MAX_SAFE_INTEGER;
}

export function validateMemory(bytes: number): void {
  if (!Number.isInteger(bytes) || bytes < 0) throw new ConfigError(`--memory ${bytes} is not a number of bytes`);
  if (bytes < MIN_MEMORY) throw new ConfigError(`--memory ${fmtBytes(bytes)} is too small (at least ${fmtBytes(MIN_MEMORY)})`);
  if (bytes % 0x1000 !== 0) throw new ConfigError(`--memory must be a multiple of 4 KiB`);
  const host = hostMemory();
  if (bytes > host) throw new ConfigError(`--memory ${fmtBytes(bytes)} is larger than this host's ${fmtBytes(host)} of RAM`);
}

export function validateVcpus(n: number, max: number): void {
  if (!Number.isInteger(n) || n < 1) throw new ConfigError(`--vcpus ${n} is invalid (at least 1)`);
  const limit = Math.min(max, 254);
  if (n > limit) throw new ConfigError(`--vcpus ${n} exceeds the limit of ${limit} (KVM allows ${max})`);
}

/**
 * The one validation of a whole configuration, whatever door it came through (flags, config
 * file, API at InstanceStart) and again when the machine starts: sizes, counts, the vsock CID
 * and socket path. The API and config file check each section as it arrives with the same
 * functions, so their messages name the field.
 */
export function validateConfig(c: MachineConfig, maxVcpus = Number.MAX_SAFE_INTEGER): void {
  validateMemory(c.memory);
  validateVcpus(c.vcpus, maxVcpus);
  if (c.vsock) validateVsockSpec(c.vsock);
  if (c.shares) validateShares(c.shares);
  if (c.drives) {
    c.drives.forEach((d) => validateDriveSpec(d));
    const ordered = orderDrives(c.drives);
    if (ordered.some((d, i) => d !== c.drives![i])) throw new ConfigError(`drives: the root drive ${ordered[0]!.id} must come first (it is /dev/vda)`);
  }
  if (c.rng && c.rng.rateLimiter) validateRateLimiter(c.rng.rateLimiter, 'entropy.rate_limiter');
}

/** Token bucket sizes and refill times: positive integers (Firecracker's u64 fields). */
export function validateRateLimiter(r: RateLimiterSpec, where: string): void {
  const bucket = (b: TokenBucketSpec | undefined, name: string) => {
    if (!b) return;
    const int = (v: number | undefined, field: string, min: number) => {
      if (v !== undefined && (!Number.isSafeInteger(v) || v < min)) throw new ConfigError(`${where}.${name}.${field}: ${v} must be an integer >= ${min}`);
    };
    int(b.size, 'size', 1);
    int(b.refillTimeMs, 'refill_time', 1);
    int(b.oneTimeBurst, 'one_time_burst', 0);
  };
  bucket(r.bandwidth, 'bandwidth');
  bucket(r.ops, 'ops');
}

export function fmtBytes(n: number): string {
  if (n >= 1024 * MiB && n % (1024 * MiB) === 0) return `${n / (1024 * MiB)}G`;
  if (n >= MiB && n % MiB === 0) return `${n / MiB}M`;
  return `${n} bytes`;
}
