// tsvmm as a TypeScript library (`import { Vm } from 'tsvmm'`): boot a guest, run commands in it
// through its agent, move files, read the control API in-process, and hear its console, hints
// and end as events. The options are the CLI's (docs/library.md). Owns only this surface: the
// machine is vmm/agent-vm.ts's, the configuration vmm/cli-options.ts's (the same validation as
// the flags), the files the default guest's. Nothing here may depend on where the package
// lives: paths come from the options or from modules found relative to this one.

import { EventEmitter } from 'node:events';
import { writeFileSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { AgentTimeoutError, AgentVm } from '../agent-vm';
import type { ApiResponse } from '../api/resources';
import { checkKvm, machineConfig } from '../cli-options';
import type { ExitStatus } from '../machine';
import type { StreamEntry } from '../hints/stream';
import { statusOf } from '../exec';
import { EXIT } from '../../lib/errors';

export { TsvmmError, UsageError } from '../../lib/errors';
export { AgentError } from '../agent/protocol';
export type { AgentErrorCode } from '../agent/protocol';
export { KernelConfigError } from '../kernel/requirements';
export { AgentTimeoutError, AgentUnreachableError } from '../agent-vm';
export type { MachineDiagnosis, VcpuDiagnosis } from '../diagnosis';
export type { ExitStatus } from '../machine';
export type { StreamEntry as HintRecord } from '../hints/stream';

export interface VmOptions {
  /** bzImage, ELF vmlinux or kernel build tree (default: Debian's stock kernel, fetched and cached). */
  kernel?: string;
  /** The kernel's lib/modules/<release> tree, for a `kernel` whose drivers are modules. */
  modules?: string;
  /** An initramfs of your own (default: the agent's, built for the kernel and cached). */
  initrd?: string;
  /**
   * Boot a bzImage through its vmlinux, unpacked on the host once and cached (default true):
   * the guest skips its own decompression, but also the kernel's own KASLR; false keeps both.
   */
  unpack?: boolean;
  /** vCPUs (default 1). */
  vcpus?: number;
  /** Guest RAM: bytes, or '512M', '2G' (default 256M). */
  memory?: number | string;
  /** The kernel command line (default tsvmm's). */
  cmdline?: string;
  /** Appended to the command line. */
  append?: string[];
  /**
   * The kernel's whole boot log on the console (default false: warnings and errors only,
   * `loglevel=5`, as `tsvmm exec` without `--verbose-console`; ignored with `cmdline`).
   */
  verboseConsole?: boolean;
  /** vCPU thread pinning (default 'none'). */
  pin?: 'none' | 'static' | 'hinted';
  /** Host CPUs the vCPU threads may use (CPU list, e.g. '0-3'). */
  hostCpus?: string;
  /** Also serve the control API on this Unix socket (tsvmm's CLI and curl can then reach it). */
  apiSock?: string;
  /** Give up on the boot after this long (default: no limit): an AgentTimeoutError with what the machine was doing. */
  bootTimeoutMs?: number;
  /** tsvmm's own log lines (the kernel's release, the config check, the initramfs build). */
  log?: (message: string) => void;
  /** The guest's serial output from the first byte (the 'console' event starts after boot). */
  console?: (chunk: Buffer) => void;
}

export interface ExecOptions {
  env?: Record<string, string>;
  cwd?: string;
  stdin?: string | Uint8Array | Readable;
  /** Kill the command (SIGKILL to its process group) after this long; the result says so. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** 'utf8' (default): stdout/stderr as strings; 'buffer': as Buffers. */
  encoding?: 'utf8' | 'buffer';
}

export interface ExecResult<Out = string> {
  /** The exit status (128+N when signal N ended the command), as a shell reports it. */
  status: number;
  /** The terminating signal's name, or null. */
  signal: string | null;
  /** The command ran past `timeoutMs` and was killed. */
  timedOut: boolean;
  stdout: Out;
  stderr: Out;
}

export interface PutOptions {
  /** Permission bits of the guest file (default 0o644). */
  mode?: number;
  /** Create missing parent directories (default true). */
  mkdirs?: boolean;
}

/** What `vm.api` answers: the status and body the HTTP API would send. */
export interface ApiAnswer {
  status: number;
  body: unknown;
}

export interface VmEvents {
  /** The guest's serial output. */
  console: [chunk: Buffer];
  /** The VM ended (shutdown(), a guest poweroff, reboot, panic or crash). */
  exit: [status: ExitStatus];
  /** A hint record from a loaded eBPF program (GET /hints' NDJSON entries, parsed). */
  hint: [record: StreamEntry];
}

export class Vm extends EventEmitter<VmEvents> {
  private exitStatus: ExitStatus | undefined;
  private hintSub: { close(): void } | undefined;

  private constructor(private readonly vm: AgentVm) {
    super();
    void vm.machine.exited.then((s) => {
      this.exitStatus = s;
      this.hintSub?.close();
      this.emit('exit', s);
    });
    this.subscribeHints();
  }

  /** Boots a guest and resolves once its agent answers (the VM is ready for exec). */
  static async boot(o: VmOptions = {}): Promise<Vm> {
    const log = o.log ?? (() => {});
    const config = await machineConfig({
      kernel: o.kernel, modules: o.modules, initrd: o.initrd,
      vcpus: o.vcpus === undefined ? undefined : String(o.vcpus),
      memory: o.memory === undefined ? undefined : String(o.memory),
      cmdline: o.cmdline, append: o.append, 'verbose-console': o.verboseConsole, pin: o.pin, 'host-cpus': o.hostCpus, 'no-unpack': o.unpack === false,
    }, log, 'exec');
    checkKvm();
    let self: Vm | undefined;
    const vm = await AgentVm.start(config, {
      log, apiSock: o.apiSock,
      console: (b) => {
        const chunk = Buffer.from(b);
        o.console?.(chunk);
        self?.emit('console', chunk);
      },
    });
    self = new Vm(vm);
    try {
      await vm.whenReady({ timeoutMs: o.bootTimeoutMs });
    } catch (e) {
      await vm.close(e instanceof AgentTimeoutError ? { code: EXIT.ERROR, reason: 'timeout', detail: `the agent did not answer within ${o.bootTimeoutMs} ms` } : undefined);
      throw e;
    }
    return self;
  }

  /** The VM's id (as `tsvmm ps` lists it). */
  get id(): string {
    return this.vm.control.id;
  }

  /** How the VM ended, once it has. */
  get exited(): ExitStatus | undefined {
    return this.exitStatus;
  }

  /** Runs `argv` (or `sh -c` of a string) in the guest and collects its output. */
  exec(argv: string[] | string, o?: ExecOptions & { encoding?: 'utf8' }): Promise<ExecResult<string>>;
  exec(argv: string[] | string, o: ExecOptions & { encoding: 'buffer' }): Promise<ExecResult<Buffer>>;
  async exec(argv: string[] | string, o: ExecOptions = {}): Promise<ExecResult<string> | ExecResult<Buffer>> {
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timeout = o.timeoutMs === undefined ? undefined : AbortSignal.timeout(o.timeoutMs);
    const signals = [o.signal, timeout].filter((s): s is AbortSignal => s !== undefined);
    const r = await this.vm.client.exec({
      argv: typeof argv === 'string' ? ['sh', '-c', argv] : argv,
      env: o.env, cwd: o.cwd, stdin: o.stdin,
      onStdout: (b) => out.push(b), onStderr: (b) => err.push(b),
      signal: signals.length ? AbortSignal.any(signals) : undefined,
      abortSignal: 'SIGKILL',
    });
    const stdout = Buffer.concat(out);
    const stderr = Buffer.concat(err);
    const base = { status: statusOf(r), signal: r.signal, timedOut: timeout?.aborted ?? false };
    return o.encoding === 'buffer' ? { ...base, stdout, stderr } : { ...base, stdout: stdout.toString('utf8'), stderr: stderr.toString('utf8') };
  }

  /** Copies a host file (path) or bytes to `guestPath`, atomically; parents made by default. */
  async put(source: string | Uint8Array, guestPath: string, o: PutOptions = {}): Promise<void> {
    await this.vm.client.put(source, guestPath, o.mode ?? 0o644, { mkdirs: o.mkdirs ?? true });
  }

  /** Reads a guest file; with `hostPath`, also writes it there. */
  async get(guestPath: string, hostPath?: string): Promise<Buffer> {
    const data = await this.vm.client.get(guestPath);
    if (hostPath !== undefined) writeFileSync(hostPath, data);
    return data;
  }

  /**
   * The control API in-process (docs/api.md): `await vm.api.request('GET', '/vcpus')`. Streams
   * (GET /hints?follow=1) are not served here: use the 'hint' event.
   */
  readonly api = {
    request: async (method: string, path: string, body?: unknown): Promise<ApiAnswer> => {
      const url = new URL(path, 'http://localhost');
      let r: ApiResponse;
      try {
        r = await this.vm.control.controller.handle({ method, path: url.pathname, query: url.searchParams, body, accept: 'application/json' });
      } catch (e) {
        const status = (e as { status?: unknown }).status;
        if (typeof status === 'number') return { status, body: { fault_message: (e as Error).message } };
        throw e;
      }
      if (r.status === 204) return { status: 204, body: undefined };
      if ('json' in r) return { status: 200, body: r.json };
      if ('text' in r) return { status: 200, body: r.text };
      throw new TypeError(`${method} ${path} streams; use the 'hint' event`);
    },
  };

  /** Stops the VM (poweroff) and releases everything; resolves with how it ended. */
  shutdown(): Promise<ExitStatus> {
    return this.vm.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.shutdown();
  }

  private subscribeHints(): void {
    const stream = this.vm.machine.paravirt?.stream;
    if (!stream) return;
    // The stream's own reader, as GET /hints?follow=1 has: its lines parsed back into records.
    this.hintSub = stream.subscribe({
      write: (line) => {
        if (this.listenerCount('hint') > 0) this.emit('hint', JSON.parse(line) as StreamEntry);
        return true;
      },
      onDrain: () => {},
      onClose: () => {},
    });
  }
}
