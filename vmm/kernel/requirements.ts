// What tsvmm needs from a guest kernel, checked before it boots: the feature table of
// tools/guest/modules.txt (feature → kernel options → modules; the initramfs builder reads the
// same table), the kernel's configuration as `make` writes it, and the verdict for one use
// (`run`, `exec`, `demo`): what is missing, and what each missing piece breaks, in words.
// Owns the reading of .config text and the rules; finding the config and the modules of a
// kernel is ./inspect's business, building the image is ./agent-image's.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { TsvmmError } from '../../lib/errors';

/** A kernel that cannot do what was asked of it (exec without vsock, say): one line per gap. */
export class KernelConfigError extends TsvmmError {}

export interface Feature {
  name: string;
  /** Kernel options the feature needs, all of them (`CONFIG_…`). */
  options: string[];
  /** Modules that provide them when they are modules, in load order. */
  modules: string[];
}

/** The rows of tools/guest/modules.txt. */
export function parseFeatureTable(text: string): Feature[] {
  const out: Feature[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const [name, options, ...modules] = line.split(/\s+/);
    if (!name || !options || modules.length === 0) throw new TypeError(`modules.txt: malformed line: ${line}`);
    out.push({ name, options: options.split(','), modules: modules[0] === '-' ? [] : modules });
  }
  return out;
}

export function readFeatureTable(root: string): Feature[] {
  return parseFeatureTable(readFileSync(join(root, 'tools/guest/modules.txt'), 'utf8'));
}

/**
 * A .config: `CONFIG_X=value` lines; `# CONFIG_X is not set` and absent options are both
 * "not set" (no entry). Values keep their text (`y`, `m`, `"string"`, `0x10`).
 */
export function parseKernelConfig(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^(CONFIG_[A-Za-z0-9_]+)=(.*)$/.exec(line.trim());
    if (m && m[2] !== 'n') out.set(m[1]!, m[2]!);
  }
  return out;
}

export type KernelUse = 'run' | 'exec' | 'demo';

/** What each feature is for, and which uses cannot work without it. */
export const FEATURE_PURPOSE: Record<string, { what: string; requiredBy: readonly KernelUse[] }> = {
  devices: { what: 'the virtio devices (virtio-mmio): vsock and with it the guest agent', requiredBy: ['exec', 'demo'] },
  acpi: { what: 'finding the devices, which tsvmm describes in ACPI tables (without ACPI: --no-acpi and CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES)', requiredBy: ['exec', 'demo'] },
  initrd: { what: "the guest agent's initramfs (gzip'd cpio)", requiredBy: ['exec', 'demo'] },
  vsock: { what: 'the guest agent, reached over virtio-vsock (exec, put, get)', requiredBy: ['exec', 'demo'] },
  pvpanic: { what: 'panic reporting (a guest panic would end as a reboot, not exit status 4)', requiredBy: [] },
  console: { what: 'the serial console (kernel messages, --console, --console-log)', requiredBy: [] },
  devtmpfs: { what: "/dev in the guest (/dev/kmsg for the agent's log)", requiredBy: [] },
  bpf: { what: "the eBPF hint programs ('affinity': bpf(2) and syscall tracepoints)", requiredBy: ['demo'] },
  kprobes: { what: "the 'prio' hint program (a kprobe)", requiredBy: [] },
  block: { what: 'virtio-blk drives (--drive, PUT /drives)', requiredBy: [] },
  ext4: { what: 'ext4 filesystems on drives (a root drive made with mkfs.ext4)', requiredBy: [] },
  rng: { what: 'virtio-rng (/dev/hwrng, entropy from the host)', requiredBy: [] },
  virtiofs: { what: 'host directories in the guest (--share, --rootfs host: virtio-fs)', requiredBy: [] },
  overlay: { what: 'overlay mounts over shared directories', requiredBy: [] },
};

export interface ModuleSet {
  /** Where they come from, for messages (a lib/modules/<version> directory). */
  source: string;
  /** Module names (`_` for `-`) the tree has, built-in ones included. */
  names: ReadonlySet<string>;
}

export interface Verdict {
  /** What makes `use` impossible: one sentence each. */
  fatal: string[];
  /** What works less well: one sentence each. */
  warnings: string[];
}

const normal = (m: string) => m.replaceAll('-', '_');

/**
 * Checks a kernel configuration against the feature table for `use`. An option built as a
 * module needs the feature's modules in `modules` (none given: the module is missing), unless
 * the user brings the initramfs (`ownInitrd`), which then has to load them. With
 * `acpi` false the devices are found on the command line instead, which needs
 * CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES.
 */
export function checkKernelConfig(config: ReadonlyMap<string, string>, features: readonly Feature[], use: KernelUse, o: { acpi: boolean; modules?: ModuleSet; ownInitrd?: boolean }): Verdict {
  const fatal: string[] = [];
  const warnings: string[] = [];
  for (const f of features) {
    if (f.name === 'acpi' && !o.acpi) continue;
    const purpose = FEATURE_PURPOSE[f.name] ?? { what: `the guest feature '${f.name}'`, requiredBy: [] };
    const required = purpose.requiredBy.includes(use);
    const say = (gap: string) => (required ? fatal : warnings).push(required ? `${gap}: tsvmm ${use} needs it for ${purpose.what}` : `${gap}: ${purpose.what} will not work`);
    const unset = f.options.filter((opt) => !config.has(opt));
    if (unset.length) {
      say(`${unset.join(' and ')} ${unset.length > 1 ? 'are' : 'is'} not set in the kernel configuration`);
      continue;
    }
    const asModules = f.options.filter((opt) => config.get(opt) === 'm');
    // With an initramfs of the user's own, loading the modules is that image's business.
    if (asModules.length === 0 || o.ownInitrd) continue;
    const missing = f.modules.filter((m) => !o.modules?.names.has(normal(m)));
    if (missing.length === 0) continue;
    const built = `${asModules.map((opt) => `${opt}=m`).join(', ')}`;
    say(o.modules
      ? `${built}, but ${o.modules.source} has no ${missing.join(', ')}`
      : `${built} (modules), but no --modules DIR (the kernel's lib/modules/<release>) was given`);
  }
  if (!o.acpi && config.get('CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES') !== 'y') {
    const gap = 'CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set, and --no-acpi describes the devices only on the command line';
    (use === 'run' ? warnings : fatal).push(`${gap}: the guest will find no virtio device`);
  }
  return { fatal, warnings };
}
