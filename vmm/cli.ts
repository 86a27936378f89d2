// The `tsvmm` command line: parses flags, turns them into a MachineConfig, runs the machine and
// maps how it ended to an exit status. Owns user-facing messages; one line per error, non-zero
// exit, no stack traces for bad input.

import { parseArgs } from 'node:util';
import { DEFAULT_CMDLINE } from './config';
import { Machine } from './machine';
import { EXIT, TsvmmError, UsageError } from '../lib/errors';
import { cmdExec, EXEC_USAGE, EXIT_TIMEOUT, parseTimeout } from './exec';
import { cmdDemo } from './demo';
import { MACHINE_FLAGS, checkKvm, controlOptions, machineConfig, runOptions } from './cli-options';
import type { MachineConfig } from './config';
import { Control } from './api/control';
import { API_USAGE, cmdBpf, cmdHaltPoll, cmdHints, cmdMetrics, cmdPs, cmdSched, cmdVcpu } from './api/commands';

const USAGE = `usage: tsvmm <command> [options]

commands:
  run     boot a kernel with a serial console on this terminal
  exec    boot the default guest (or a given kernel), run a command in it through the guest
          agent, stream its output, and exit with its status
  demo    boot the default guest, inject the 'affinity' eBPF program, pin a guest task
          with taskset and show the host pinning the vCPU thread (npm start)
  bpf, hints, sched, vcpu, halt-poll, metrics, ps
          control a running VM through its API socket (see below, docs/api.md)
  help    show this help

tsvmm run [--kernel PATH|DIR] [--modules DIR] [--initrd PATH] [--cmdline STR] [--append STR]
          [--vcpus N] [--memory SIZE] [--vsock cid=N,uds=PATH] [--share HOST:GUEST[,ro]]...
          [--rootfs host] [--drive path=IMG[,ro][,id=NAME][,root]]...
          [--no-rng] [--no-acpi] [--timeout SEC] [--quiet]
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
  --log-path F     log lines to F; --log-level error|warn|info|debug (default info)
  --metrics-path F append metrics as JSON lines to F every --metrics-interval SEC (60)

exit status: 0 guest powered off, 1 VMM error, 2 usage error, 3 guest rebooted,
4 guest panicked, 5 guest crashed (triple fault, KVM internal error), 124 --timeout expired.

${EXEC_USAGE}
${API_USAGE}
Without /dev/kvm, run tsvmm inside the nested sandbox (slow, software emulation):
  tools/sandbox/run.sh -- tsvmm run ...
`;

async function cmdRun(args: string[]): Promise<number> {
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
  const start = (config: MachineConfig) => {
    checkKvm();
    return Machine.start(config, { console: (b) => process.stdout.write(b), log: control.log });
  };
  const defaults = values.wait && values.kernel !== undefined ? await machineConfig(values, () => {}) : { acpi: !values['no-acpi'] };
  const control: Control<Machine> = await Control.open<Machine>(values, start, defaults);
  const log = control.log;
  let machine: Machine;
  try {
    if (values.wait) {
      const r = await control.waitForStart();
      if (typeof r === 'string') {
        await control.close();
        return r === 'SIGINT' ? 130 : 143;
      }
      machine = r;
    } else {
      const config = control.configFromFile({ acpi: !values['no-acpi'] }) ?? (await machineConfig(values, log));
      machine = await start(config);
      control.attach(machine);
    }
  } catch (e) {
    await control.close();
    throw e;
  }
  const detachInput = attachStdin(machine);
  const onSignal = (sig: NodeJS.Signals) => machine.finish({ code: sig === 'SIGINT' ? 130 : 143, reason: 'signal', detail: `tsvmm got ${sig}` });
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const timer = timeoutSec > 0
    ? setTimeout(() => machine.finish({ code: EXIT_TIMEOUT, reason: 'timeout', detail: `--timeout ${timeoutSec} s expired` }), timeoutSec * 1000)
    : undefined;
  const status = await machine.exited;
  clearTimeout(timer);
  detachInput();
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  log(`${status.detail} (exit ${status.code})`);
  await control.close();
  return status.code;
}

/** Feeds stdin to the guest's serial port; in raw terminal mode, Ctrl-A x quits (like QEMU). */
function attachStdin(machine: Machine): () => void {
  const stdin = process.stdin;
  if (!stdin.readable) return () => {};
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
      case 'exec':
        return await cmdExec(rest);
      case 'demo':
        return await cmdDemo(rest);
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
