// What `tsvmm run` and `tsvmm exec` share: the machine flags, turning them into a
// MachineConfig, and the checks that come before any KVM object exists.

import { existsSync } from 'node:fs';
import { ConfigError, DEFAULT_CMDLINE, DEFAULT_MEMORY, MachineConfig, parseSize, QUIET_CONSOLE, validateConfig, validateVcpus } from './config';
import { ensureDefaultGuest } from './default-guest';
import { prepareKernel, type KernelUse } from './kernel/index';
import { parseVsockSpec } from '../devices/virtio/vsock/index';
import { orderDrives, parseDriveSpec } from '../devices/virtio/block/spec';
import { UsageError } from '../lib/errors';
import { sharesFromFlags } from './shares';
import { findVirtiofsd } from '../devices/virtio/fs/daemon';
import { VcpuWorkers } from './vcpu/threads';


export const runOptions = {
  kernel: { type: 'string' },
  modules: { type: 'string' },
  initrd: { type: 'string' },
  cmdline: { type: 'string' },
  append: { type: 'string', multiple: true },
  vcpus: { type: 'string' },
  memory: { type: 'string' },
  vsock: { type: 'string' },
  drive: { type: 'string', multiple: true },
  'no-rng': { type: 'boolean' },
  pin: { type: 'string' },
  'host-cpus': { type: 'string' },
  prio: { type: 'string' },
  'prio-max': { type: 'string' },
  'no-acpi': { type: 'boolean' },
  'no-unpack': { type: 'boolean' },
  share: { type: 'string', multiple: true },
  rootfs: { type: 'string' },
  quiet: { type: 'boolean', short: 'q' },
  help: { type: 'boolean', short: 'h' },
} as const;

function parseIntStrict(flag: string, v: string): number {
  if (!/^\d+$/.test(v)) throw new UsageError(`${flag} '${v}' is not a number`);
  return Number(v);
}

const vcpusFlag = (v: string | undefined): number => (v === undefined ? 1 : parseIntStrict('--vcpus', v));

/**
 * The vCPU workers of the machine the flags describe, spawned now, before its configuration
 * (the kernel's checks, the default guest's image), so that their own start overlaps that too
 * (vmm/vcpu/threads.ts). None where the flags do not say the machine (--config-file, --wait),
 * without KVM, or for a --vcpus the configuration refuses (it says why, in flag order).
 */
export function spawnWorkersEarly(values: { vcpus?: string; wait?: boolean; 'config-file'?: string }): VcpuWorkers | undefined {
  if (values.wait || values['config-file'] !== undefined || !existsSync('/dev/kvm')) return undefined;
  let n: number;
  try {
    n = vcpusFlag(values.vcpus);
    validateVcpus(n, Infinity);
  } catch {
    return undefined;
  }
  const workers = new VcpuWorkers();
  workers.spawn(n);
  return workers;
}

/**
 * The machine the flags describe. `use` says what the guest is for: `exec` and `demo` need the
 * guest agent, so a `--kernel` without `--initrd` gets the agent's initramfs built for it (as
 * `run` does when given `--modules`), and its configuration must have what they need; an
 * `exec` guest's console is quiet unless `verbose-console` (QUIET_CONSOLE).
 */
export async function machineConfig(values: Record<string, unknown>, log: (m: string) => void, use: KernelUse = 'run'): Promise<MachineConfig> {
  const v = values as { kernel?: string; modules?: string; initrd?: string; cmdline?: string; append?: string[]; vcpus?: string; memory?: string; vsock?: string; pin?: string; 'host-cpus'?: string; prio?: string; 'prio-max'?: string; 'no-acpi'?: boolean; 'no-unpack'?: boolean; drive?: string[]; 'no-rng'?: boolean; share?: string[]; rootfs?: string; 'verbose-console'?: boolean };
  const pin = v.pin ?? 'none';
  if (pin !== 'none' && pin !== 'static' && pin !== 'hinted') throw new UsageError(`--pin '${pin}' must be none, static or hinted`);
  const prio = v.prio ?? 'none';
  if (prio !== 'none' && prio !== 'hinted') throw new UsageError(`--prio '${prio}' must be none or hinted`);
  const prioMax = v['prio-max'] === undefined ? undefined : parseIntStrict('--prio-max', v['prio-max']);
  if (prioMax !== undefined && (prioMax < 1 || prioMax > 99)) throw new UsageError(`--prio-max ${prioMax} must be 1..99`);
  // Before the guest image is made: a missing virtiofsd fails at once.
  const shares = sharesFromFlags(v.share, v.rootfs);
  const virtiofsd = shares.length ? findVirtiofsd() : undefined;
  // Before the kernel is resolved (that may build the default guest): bad flags fail at once.
  const drives = v.drive === undefined ? undefined : orderDrives(v.drive.map((d, i) => parseDriveSpec(d, i)));
  let kernel = v.kernel;
  let initrd = v.initrd;
  if (!kernel) {
    if (v.modules !== undefined) throw new UsageError('--modules needs --kernel (the default guest brings its own modules)');
    const guest = await ensureDefaultGuest(log);
    kernel = guest.kernel;
    initrd ??= guest.initrd;
  } else {
    const k = await prepareKernel({
      kernel, modules: v.modules, use, acpi: !v['no-acpi'], ownInitrd: initrd !== undefined,
      agentImage: initrd === undefined && (use !== 'run' || v.modules !== undefined),
    }, log);
    kernel = k.image;
    initrd ??= k.initrd;
  }
  // exec's console is quiet unless asked (QUIET_CONSOLE); `run` and `demo` show the boot. A
  // --cmdline is the user's own, taken as it is; --append comes last, so it can override.
  const quiet = use === 'exec' && v.cmdline === undefined && !v['verbose-console'];
  const cmdline = [v.cmdline ?? DEFAULT_CMDLINE, ...(quiet ? [QUIET_CONSOLE] : []), ...(v.append ?? [])].join(' ');
  const config: MachineConfig = {
    kernel,
    initrd,
    ...(v['no-unpack'] ? { unpack: false } : {}),
    cmdline,
    vcpus: vcpusFlag(v.vcpus),
    memory: v.memory === undefined ? DEFAULT_MEMORY : parseSize(v.memory),
    acpi: !v['no-acpi'],
    vsock: v.vsock === undefined ? undefined : parseVsockSpec(v.vsock),
    drives,
    rng: v['no-rng'] ? false : undefined,
    pin,
    hostCpus: v['host-cpus'],
    prio,
    prioMax,
    ...(shares.length ? { shares, virtiofsd } : {}),
  };
  validateConfig(config);
  return config;
}

export function checkKvm(): void {
  if (!existsSync('/dev/kvm')) {
    throw new ConfigError('/dev/kvm not found: this host has no KVM. Run tsvmm inside the nested sandbox (software emulation, slow): tools/sandbox/run.sh -- tsvmm ...');
  }
}


/** `tsvmm run`'s control and observation flags (vmm/api/control.ts, docs/api.md). */
export const controlOptions = {
  'api-sock': { type: 'string' },
  wait: { type: 'boolean' },
  'config-file': { type: 'string' },
  'log-path': { type: 'string' },
  'log-level': { type: 'string' },
  'metrics-path': { type: 'string' },
  'metrics-interval': { type: 'string' },
} as const;

/** Machine flags that --config-file (and --wait without --kernel) replace. */
export const MACHINE_FLAGS = ['kernel', 'modules', 'initrd', 'cmdline', 'append', 'vcpus', 'memory', 'vsock', 'pin', 'host-cpus', 'prio', 'prio-max', 'share', 'rootfs', 'drive', 'no-rng', 'no-unpack'] as const;
