// The `tsvmm` command line: parses flags, turns them into a MachineConfig, runs the machine and
// maps how it ended to an exit status. Owns user-facing messages; one line per error, non-zero
// exit, no stack traces for bad input.

import { parseArgs } from 'node:util';
import { DEFAULT_CMDLINE } from './config';
import { Machine } from './machine';
import { EXIT, TsvmmError, UsageError } from '../lib/errors';
import { cmdExec, EXEC_USAGE, EXIT_TIMEOUT, parseTimeout } from './exec';
import { cmdDemo } from './demo';
import { MACHINE_FLAGS, checkKvm, controlOptions, machineConfig, runOptions, spawnWorkersEarly } from './cli-options';
import type { MachineConfig } from './config';
import { Control } from './api/control';
import { attachConsole, terminalSize } from './console/index';
import { ConsoleResizer } from './console/resize';
import { AgentClient } from './agent/client';
import { AGENT_VSOCK_PORT } from './agent/connect';
import { GUEST_CID } from './agent-vm';
import { mkdtempSync, readFileSync, rmSync, statSync, type BigIntStats } from 'node:fs';
import { probeKernel } from './boot/loader';
import { unpackKernel } from './boot/unpack';
import { StartupClock } from './startup';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { API_USAGE, CONTROL_COMMANDS, cmdBpf, cmdHaltPoll, cmdHints, cmdMetrics, cmdPs, cmdSched, cmdVcpu, controlUsage } from './api/commands';

const USAGE = `usage: tsvmm <command> [options]

commands:
  run     boot a kernel with a serial console on this terminal
  exec    boot the default guest (or a given kernel), run a command in it through the guest
          agent, stream its output, and exit with its status
  demo    boot the default guest, inject the 'affinity' eBPF program, pin a guest task
          with taskset and show the host pinning the vCPU thread (npm start)
  unpack  unpack a bzImage's kernel into the tsvmm cache now (boots do it on first use)
          and print the vmlinux's path
  bpf, hints, sched, vcpu, halt-poll, metrics, ps
          control a running VM through its API socket (see below, docs/api.md)
  help    show this help

tsvmm run [--kernel PATH|DIR] [--modules DIR] [--initrd PATH] [--cmdline STR] [--append STR]
          [--vcpus N] [--memory SIZE] [--vsock cid=N,uds=PATH] [--share HOST:GUEST[,ro]]...
          [--rootfs host] [--drive path=IMG[,ro][,id=NAME][,root]]...
          [--no-rng] [--no-acpi] [--no-unpack] [--timeout SEC] [--quiet]
  --kernel PATH    bzImage or ELF vmlinux, or a kernel build tree (its arch/x86/boot/bzImage
                   or vmlinux, .config and modules); default: Debian's stock kernel, fetched
                   and cached. tsvmm logs the release the image states and checks the
                   kernel's configuration (.config, config-<release> beside the image, or
                   IKCONFIG), saying what is missing for what
  --modules DIR    the kernel's modules: a lib/modules/<release> tree (make modules_install
                   INSTALL_MOD_PATH=...); with it, tsvmm builds (and caches) the guest agent's
                   initramfs for that kernel (exec and demo always do, for --kernel)
  --initrd PATH    initramfs (default: tsvmm's guest image when --kernel is not given)
  --cmdline STR    kernel command line (default: "${DEFAULT_CMDLINE}")
  --append STR     appended to the command line
  --vcpus N        number of vCPUs (default 1)
  --memory SIZE    guest RAM, e.g. 512M or 2G (default 256M)
  --vsock SPEC     virtio-vsock with Firecracker's hybrid UDS protocol: guest CID N (>= 3);
                   host clients connect to PATH and send "CONNECT <port>\n"; guest
                   connections to port P go to PATH_P
  --share H:G[,ro] host directory H at guest directory G over virtio-fs, served by the
                   host's virtiofsd (one per share; ro: the host refuses writes, EROFS);
                   repeatable; the default guest's init mounts it
  --rootfs host    the guest's / is the host's /, read-only over virtio-fs, with tmpfs on
                   /tmp, /run, /var/tmp and /root: the host's programs run unchanged
  --drive SPEC     a virtio-blk drive on raw image IMG (repeatable: /dev/vda, vdb, … in
                   order); ro: read-only (VIRTIO_BLK_F_RO); id=NAME: what GET_ID answers
                   (default driveN); root: boot from it (it becomes vda, root=/dev/vda)
  --no-rng         no virtio-rng (on by default: /dev/hwrng fed from the host's getrandom,
                   1 MiB/s; PUT /entropy sets Firecracker's rate limiter)
  --no-acpi        describe devices on the command line only (kernels with
                   CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES), boot with acpi=off
  --no-unpack      boot a bzImage through its own decompressor. By default tsvmm unpacks
                   its compressed kernel on the host once (xz, gzip, zstd, lz4, lzma, bzip2;
                   cached as <cache>/vmlinux/<sha256>.elf) and enters the vmlinux directly,
                   which skips the guest's decompression but also the kernel's own KASLR
                   (the physical and virtual base stay fixed); --no-unpack keeps KASLR
  --timeout SEC    stop the VM after SEC seconds and exit 124 (as timeout(1) does)
  --pin POLICY     vCPU thread pinning: none (default), static, hinted (guest affinity)
  --host-cpus LIST host CPUs the vCPU threads may use (default: this process's)
  --prio MODE      vCPU thread priority: none (default) or hinted (a vCPU carrying a guest
                   SCHED_FIFO/RR task gets a SCHED_FIFO thread; load the 'prio' program)
  --prio-max N     highest host SCHED_FIFO priority --prio hinted gives (1..99, default 10)
  --quiet          no tsvmm log lines on stderr
  --api-sock PATH  serve the control API (Firecracker-compatible subset, docs/api.md) on
                   this Unix socket
  --wait           with --api-sock: configure and start the VM through the API
                   (PUT /boot-source, /machine-config, /vsock, then InstanceStart)
  --config-file F  the machine as one JSON document ({"boot-source": …, "machine-config":
                   …, "vsock": …}); replaces the machine flags
  --log-path F     log lines to F; --log-level error|warn|info|debug (default info;
                   debug also times the VMM's start up to the first KVM_RUN, in phases)
  --metrics-path F append metrics as JSON lines to F every --metrics-interval SEC (60)

console: with tsvmm's own guest image (no --initrd), the console is a root shell (the guest
agent runs beside it); in a terminal, typed keys go to the guest, and Ctrl-A starts an escape:
  Ctrl-A x quit (exit 0)   Ctrl-A h help   Ctrl-A c send a break (then a SysRq key)
  Ctrl-A Ctrl-A a literal Ctrl-A. The terminal's TERM and size are passed to the guest.

exit status: 0 guest powered off (or Ctrl-A x), 1 VMM error, 2 usage error, 3 guest rebooted,
4 guest panicked, 5 guest crashed (triple fault, KVM internal error), 124 --timeout expired.

${EXEC_USAGE}

tsvmm unpack IMAGE
  unpacks the bzImage IMAGE's compressed kernel into the tsvmm cache ($TSVMM_CACHE, else
  ~/.cache/tsvmm; a temp directory when that is read-only) unless it is there, and prints
  the vmlinux's path; an ELF vmlinux is printed as it is. An lzo or unknown payload exits 1.
${API_USAGE}
Without /dev/kvm, run tsvmm inside the nested sandbox (slow, software emulation):
  tools/sandbox/run.sh -- tsvmm run ...
`;

async function cmdRun(args: string[]): Promise<number> {
  const startup = new StartupClock();
  const { values, positionals } = parseArgs({ args, options: { ...runOptions, ...controlOptions, timeout: { type: 'string' } }, allowPositionals: true, strict: true });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (positionals.length) throw new UsageError(`unexpected argument '${positionals[0]}'`);
  const timeoutSec = parseTimeout(values.timeout);
  // Machine flags are replaced by --config-file, and by the API under --wait (unless --kernel is given).
  const given = MACHINE_FLAGS.filter((f) => values[f] !== undefined);
  if (values['config-file'] !== undefined && given.length) throw new UsageError(`--config-file replaces --${given[0]}`);
  if (values.wait && values.kernel === undefined && given.length) throw new UsageError(`--wait without --kernel takes the machine from the API; --${given[0]} is not allowed`);
  let workers: ReturnType<typeof spawnWorkersEarly>;
  const start = (config: MachineConfig) => {
    checkKvm();
    startup.end('config');
    return Machine.start(config, { console: (b) => process.stdout.write(b), log: control.log, error: control.error, startup, debug: control.debug, workers });
  };
  const defaults = values.wait && values.kernel !== undefined ? await machineConfig(values, () => {}) : { acpi: !values['no-acpi'] };
  // Spawned before the API thread (Control.open waits for it to listen): their starts overlap.
  workers = spawnWorkersEarly(values);
  let control: Control<Machine>;
  try {
    control = await Control.open<Machine>(values, start, defaults);
  } catch (e) {
    await workers?.close();
    throw e;
  }
  const log = control.log;
  let machine: Machine;
  let shell: ReturnType<typeof consoleShell> | undefined;
  try {
    if (values.wait) {
      const r = await control.waitForStart();
      if (typeof r === 'string') {
        await control.close();
        return r === 'SIGINT' ? 130 : 143;
      }
      machine = r;
    } else {
      const fromFile = control.configFromFile({ acpi: !values['no-acpi'] });
      let config = fromFile ?? (await machineConfig(values, log));
      // tsvmm's own image (the default guest, or --kernel with --modules): a console shell.
      if (!fromFile && values.initrd === undefined && (values.kernel === undefined || values.modules !== undefined)) {
        shell = consoleShell(config);
        config = shell.config;
      }
      machine = await start(config);
      control.attach(machine);
    }
  } catch (e) {
    await workers?.close(); // those no machine took (a failed configuration)
    await control.close();
    shell?.cleanup();
    throw e;
  }
  const m = machine;
  let resizer: ConsoleResizer | undefined;
  if (shell && m.vsock) {
    const client = new AgentClient(() => m.vsock!.connect(AGENT_VSOCK_PORT));
    resizer = new ConsoleResizer((argv, signal) => client.exec({ argv, signal }), log);
  }
  const term = attachConsole({
    stdin: process.stdin,
    sizeFrom: process.stdout.isTTY ? process.stdout : process.stderr,
    serial: () => m.serial,
    quit: () => m.finish({ code: 0, reason: 'quit', detail: 'Ctrl-A x: stopped from the console' }),
    print: (text) => process.stderr.write(`${text}\n`),
    onResize: resizer && ((rows, cols) => resizer.resize(rows, cols)),
    hint: !values.quiet,
  });
  const codes: Partial<Record<NodeJS.Signals, number>> = { SIGINT: 130, SIGTERM: 143, SIGHUP: 129 };
  const onSignal = (sig: NodeJS.Signals) => m.finish({ code: codes[sig] ?? 1, reason: 'signal', detail: `tsvmm got ${sig}` });
  for (const s of Object.keys(codes) as NodeJS.Signals[]) process.on(s, onSignal);
  const timer = timeoutSec > 0
    ? setTimeout(() => m.finish({ code: EXIT_TIMEOUT, reason: 'timeout', detail: `--timeout ${timeoutSec} s expired` }), timeoutSec * 1000)
    : undefined;
  let status: Awaited<typeof m.exited>;
  try {
    status = await m.exited;
  } finally {
    // Every way out (poweroff, panic, a VMM error, a signal, Ctrl-A x) gives the terminal back.
    clearTimeout(timer);
    resizer?.close();
    term.detach();
    for (const s of Object.keys(codes) as NodeJS.Signals[]) process.off(s, onSignal);
    shell?.cleanup();
  }
  // A VM that failed says so whatever --quiet says: its exit status alone does not tell why.
  const failed = status.reason === 'crash' || status.reason === 'panic' || status.reason === 'error';
  (failed ? control.error : log)(`${status.detail} (exit ${status.code})`);
  await control.close();
  return status.code;
}

/** `tsvmm unpack IMAGE`: the cached vmlinux's path on stdout. */
function cmdUnpack(args: string[]): number {
  const { values, positionals } = parseArgs({ args, options: { help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError('unpack needs one IMAGE');
  const path = positionals[0]!;
  let image: Uint8Array;
  let before: BigIntStats | undefined;
  try {
    before = statSync(path, { bigint: true });
    image = readFileSync(path);
  } catch (e) {
    throw new UsageError(`${path}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
  }
  if (probeKernel(path, image) === 'elf') {
    process.stdout.write(`${path}\n`);
    return 0;
  }
  const log = (m: string) => process.stderr.write(`tsvmm: ${m}\n`);
  const u = unpackKernel(path, image, log, before);
  if (!u) return EXIT.ERROR;
  process.stdout.write(`${u.path}\n`);
  return 0;
}

/**
 * The console shell of tsvmm's own image (tools/guest/init.sh): asked for on the command
 * line with the terminal's TERM and size, and a vsock device (in a temporary directory, unless
 * --vsock named one) through which the agent applies later resizes.
 */
function consoleShell(config: MachineConfig): { config: MachineConfig; cleanup: () => void } {
  const extra = ['tsvmm.console=shell'];
  const term = process.env.TERM;
  // A TERM the kernel's parser keeps as one word, and the init can pass on safely.
  if (process.stdin.isTTY && term && /^[A-Za-z0-9._+-]{1,64}$/.test(term)) extra.push(`TERM=${term}`);
  const size = terminalSize(process.stdout.isTTY ? process.stdout : process.stderr);
  if (process.stdin.isTTY && size) extra.push(`tsvmm.rows=${size.rows}`, `tsvmm.cols=${size.cols}`);
  const dir = config.vsock ? undefined : mkdtempSync(join(tmpdir(), 'tsvmm-run-'));
  return {
    config: { ...config, cmdline: `${config.cmdline} ${extra.join(' ')}`, vsock: config.vsock ?? { cid: GUEST_CID, udsPath: join(dir!, 'vsock') } },
    cleanup: () => {
      if (dir) rmSync(dir, { recursive: true, force: true });
    },
  };
}

const isControl = (cmd: string | undefined): cmd is (typeof CONTROL_COMMANDS)[number] => (CONTROL_COMMANDS as readonly (string | undefined)[]).includes(cmd);

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    if (isControl(cmd) && rest.some((a) => a === '--help' || a === '-h')) {
      process.stdout.write(controlUsage(cmd));
      return 0;
    }
    switch (cmd) {
      case 'run':
        return await cmdRun(rest);
      case 'exec':
        return await cmdExec(rest);
      case 'demo':
        return await cmdDemo(rest);
      case 'unpack':
        return cmdUnpack(rest);
      case 'bpf':
        return await cmdBpf(rest);
      case 'sched':
        return await cmdSched(rest);
      case 'hints':
        return await cmdHints(rest);
      case 'vcpu':
        return await cmdVcpu(rest);
      case 'halt-poll':
        return await cmdHaltPoll(rest);
      case 'metrics':
        return await cmdMetrics(rest);
      case 'ps':
        return await cmdPs(rest);
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
    // tsvmm's own errors (bad input, a failed setup step or call): one line and their exit code;
    // anything else is a bug and gets its stack.
    const err = e as Error & { code?: string };
    const usage = e instanceof TsvmmError ? e.exitCode === EXIT.USAGE : err.code?.startsWith('ERR_PARSE_ARGS') === true;
    if (usage || e instanceof TsvmmError) {
      process.stderr.write(`tsvmm: ${err.message}\n${usage ? "Try 'tsvmm --help'.\n" : ''}`);
      return e instanceof TsvmmError ? e.exitCode : EXIT.USAGE;
    }
    process.stderr.write(`tsvmm: internal error: ${err.stack ?? err.message}\n`);
    return EXIT.ERROR;
  }
}

if (process.env.TSVMM_NO_MAIN === undefined) process.exitCode = await main(process.argv.slice(2));
