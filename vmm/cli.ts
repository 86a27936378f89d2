// The `tsvmm` command line: parses flags, turns them into a MachineConfig, runs the machine and
// maps how it ended to an exit status. Owns user-facing messages; one line per error, non-zero
// exit, no stack traces for bad input.

import { existsSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ConfigError, DEFAULT_CMDLINE, DEFAULT_MEMORY, MachineConfig, parseSize } from './config';
import { ensureDefaultGuest } from './default-guest';
import { EXIT, Machine } from './vm';
import { SysError } from '../kvm/errors';
import { KernelImageError } from './boot/errors';

const USAGE = `usage: tsvmm <command> [options]

commands:
  run     boot a kernel with a serial console on this terminal
  help    show this help

tsvmm run [--kernel PATH] [--initrd PATH] [--cmdline STR] [--append STR]
          [--vcpus N] [--memory SIZE] [--no-acpi] [--quiet]
  --kernel PATH    bzImage or ELF vmlinux (default: Debian's stock kernel, fetched and cached)
  --initrd PATH    initramfs (default: tsvmm's guest image when --kernel is not given)
  --cmdline STR    kernel command line (default: "${DEFAULT_CMDLINE}")
  --append STR     appended to the command line
  --vcpus N        number of vCPUs (default 1)
  --memory SIZE    guest RAM, e.g. 512M or 2G (default 256M)
  --no-acpi        describe devices on the command line only (kernels with
                   CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES), boot with acpi=off
  --quiet          no tsvmm log lines on stderr

exit status: 0 guest powered off, 1 VMM error, 2 usage error, 3 guest rebooted,
4 guest panicked, 5 guest crashed (triple fault, KVM internal error).
Without /dev/kvm, run tsvmm inside the nested sandbox (slow, software emulation):
  tools/sandbox/run.sh -- tsvmm run ...
`;

class UsageError extends Error {}

const runOptions = {
  kernel: { type: 'string' },
  initrd: { type: 'string' },
  cmdline: { type: 'string' },
  append: { type: 'string', multiple: true },
  vcpus: { type: 'string' },
  memory: { type: 'string' },
  'no-acpi': { type: 'boolean' },
  quiet: { type: 'boolean', short: 'q' },
  help: { type: 'boolean', short: 'h' },
} as const;

function parseIntStrict(flag: string, v: string): number {
  if (!/^\d+$/.test(v)) throw new UsageError(`${flag} '${v}' is not a number`);
  return Number(v);
}

async function machineConfig(values: Record<string, unknown>, log: (m: string) => void): Promise<MachineConfig> {
  const v = values as { kernel?: string; initrd?: string; cmdline?: string; append?: string[]; vcpus?: string; memory?: string; 'no-acpi'?: boolean };
  let kernel = v.kernel;
  let initrd = v.initrd;
  if (!kernel) {
    const guest = await ensureDefaultGuest(log);
    kernel = guest.kernel;
    initrd ??= guest.initrd;
  }
  const cmdline = [v.cmdline ?? DEFAULT_CMDLINE, ...(v.append ?? [])].join(' ');
  return {
    kernel,
    initrd,
    cmdline,
    vcpus: v.vcpus === undefined ? 1 : parseIntStrict('--vcpus', v.vcpus),
    memory: v.memory === undefined ? DEFAULT_MEMORY : parseSize(v.memory),
    acpi: !v['no-acpi'],
  };
}

function checkKvm(): void {
  if (!existsSync('/dev/kvm')) {
    throw new ConfigError('/dev/kvm not found: this host has no KVM. Run tsvmm inside the nested sandbox (software emulation, slow): tools/sandbox/run.sh -- tsvmm ...');
  }
}

async function cmdRun(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, options: runOptions, allowPositionals: true, strict: true });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (positionals.length) throw new UsageError(`unexpected argument '${positionals[0]}'`);
  const log = values.quiet ? () => {} : (m: string) => process.stderr.write(`tsvmm: ${m}\n`);
  const config = await machineConfig(values, log);
  checkKvm();
  const machine = await Machine.start(config, { console: (b) => process.stdout.write(b), log });
  const detachInput = attachStdin(machine);
  const onSignal = (sig: NodeJS.Signals) => machine.finish({ code: sig === 'SIGINT' ? 130 : 143, reason: 'signal', detail: `tsvmm got ${sig}` });
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const status = await machine.exited;
  detachInput();
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  log(`${status.detail} (exit ${status.code})`);
  return status.code;
}

/** Feeds stdin to the guest's serial port; in raw terminal mode, Ctrl-A x quits (like QEMU). */
function attachStdin(machine: Machine): () => void {
  const stdin = process.stdin;
  if (!stdin.readable || (!stdin.isTTY && process.env.CI)) return () => {};
  const raw = stdin.isTTY;
  if (raw) stdin.setRawMode(true);
  let pending: Uint8Array = new Uint8Array(0);
  let ctrlA = false;
  const flush = () => {
    if (!pending.length || !machine.serial) return;
    const n = machine.serial.enqueueInput(pending);
    pending = pending.subarray(n);
    if (pending.length) setTimeout(flush, 5);
  };
  const onData = (chunk: Buffer) => {
    if (raw) {
      for (const b of chunk) {
        if (ctrlA && (b === 0x78 || b === 0x58)) {
          machine.finish({ code: 130, reason: 'signal', detail: 'Ctrl-A x' });
          return;
        }
        ctrlA = b === 0x01;
      }
    }
    const merged = new Uint8Array(pending.length + chunk.length);
    merged.set(pending);
    merged.set(chunk, pending.length);
    pending = merged;
    flush();
  };
  stdin.on('data', onData);
  return () => {
    stdin.off('data', onData);
    if (raw) stdin.setRawMode(false);
    stdin.pause();
    stdin.unref?.();
  };
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case 'run':
        return await cmdRun(rest);
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(USAGE);
        return cmd === undefined ? EXIT.USAGE : 0;
      default:
        throw new UsageError(`unknown command '${cmd}'`);
    }
  } catch (e) {
    const err = e as Error & { code?: string };
    if (e instanceof UsageError || err.code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`tsvmm: ${err.message}\nTry 'tsvmm --help'.\n`);
      return EXIT.USAGE;
    }
    if (e instanceof ConfigError || e instanceof KernelImageError || e instanceof SysError || err.name === 'DefaultGuestError' || err.name === 'AcpiError') {
      process.stderr.write(`tsvmm: ${err.message}\n`);
      return EXIT.ERROR;
    }
    process.stderr.write(`tsvmm: internal error: ${err.stack ?? err.message}\n`);
    return EXIT.ERROR;
  }
}

process.exitCode = await main(process.argv.slice(2));
