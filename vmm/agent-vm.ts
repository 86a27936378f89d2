// A machine booted to talk to its guest agent: what `tsvmm exec`, `tsvmm demo` and the library's
// Vm share. Starts the machine (vsock on a socket in a temporary directory of its own unless the
// config names one), lists it in `tsvmm ps`, watches the console for the init's marker lines,
// and resolves `ready()` once the agent answers — or rejects, in words, when it never can: the
// VM ended, or the guest booted without binding the vsock device (a kernel without
// CONFIG_VIRTIO_VSOCKETS, or without its modules). Owns the machine, that directory and the ps
// entry; close() releases all three. It must not parse command lines (exec.ts, demo.ts do).

import type { StartupClock } from './startup';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentClient } from './agent/client';
import { AGENT_VSOCK_PORT } from './agent/connect';
import { Control } from './api/control';
import type { MachineConfig } from './config';
import { parseInitMarker } from './default-guest';
import { Machine, type ExitStatus } from './machine';
import { STATUS } from '../devices/virtio/mmio';
import { EXIT, TsvmmError } from '../lib/errors';
import { formatDiagnosis, type MachineDiagnosis } from './diagnosis';

/** The guest came up but its agent cannot be reached, and never will be. */
export class AgentUnreachableError extends TsvmmError {}

/**
 * The agent did not answer in time, or the wait was interrupted: the message ends with what
 * the machine was doing (vCPUs, devices, the tail of the guest console), also kept as
 * `diagnosis`, so a guest that hung says where.
 */
export class AgentTimeoutError extends TsvmmError {
  constructor(what: string, readonly diagnosis: MachineDiagnosis | undefined) {
    super(diagnosis ? `${what}\n${formatDiagnosis(diagnosis)}` : `${what} (the machine could not be diagnosed)`);
  }
}

/** How long diagnose() may take before the error goes without it. */
const DIAGNOSE_MS = 15_000;

/** `diagnose()`, bounded; undefined when it failed or took too long. */
export async function diagnoseBounded(diagnose: () => Promise<MachineDiagnosis>): Promise<MachineDiagnosis | undefined> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([diagnose(), new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), DIAGNOSE_MS)))]);
  } catch {
    return undefined;
  } finally {
    clearTimeout(timer);
  }
}

/** The default guest CID: each VM has its own vsock device, so the same CID in two VMs is fine. */
export const GUEST_CID = 3;
/** After init says `ready`, how long the vsock driver may still take to set DRIVER_OK. */
const VSOCK_BIND_GRACE_MS = 5000;

export interface AgentVmOptions {
  /** Guest serial output, besides the marker scan. */
  console?: (bytes: Uint8Array) => void;
  log?: (msg: string) => void;
  /** Slow one-time steps (unpacking a new kernel); default `log`. */
  progress?: (msg: string) => void;
  /** The VMM's start in phases (vmm/startup.ts). */
  startup?: StartupClock;
  /** Serve the control API on this socket (the library's `apiSock`). */
  apiSock?: string;
}

/** Milliseconds since this process started (performance.timeOrigin), for the timings. */
const now = () => performance.now();

export class AgentVm {
  readonly client: AgentClient;
  /** When the init printed `tsvmm-init: ready` (ms since process start), if it did. */
  initReadyAt: number | undefined;
  /** When the agent first answered. */
  agentAt: number | undefined;
  /** The init's warning/error lines (a module that failed to load, say), for error messages. */
  readonly initProblems: string[] = [];
  private readonly ready: Promise<void>;
  private readonly abort = new AbortController();
  private ended: ExitStatus | undefined;
  /** Set when the guest is up and its agent can never answer. */
  private unreachable: AgentUnreachableError | undefined;
  private closing?: Promise<ExitStatus>;
  private readonly startedAt = now();

  private constructor(
    readonly machine: Machine,
    readonly control: Control<Machine>,
    private readonly dir: string | undefined,
    lineScan: LineScanner,
  ) {
    this.client = new AgentClient(() => machine.vsock!.connect(AGENT_VSOCK_PORT));
    void machine.exited.then((s) => {
      this.ended = s;
      this.abort.abort();
    });
    lineScan.onLine = (line) => this.onConsoleLine(line);
    this.ready = this.waitForAgent();
    this.ready.catch(() => {});
  }

  /** Starts the machine; `ready()` says when its agent answers. */
  static async start(config: MachineConfig, o: AgentVmOptions = {}): Promise<AgentVm> {
    const log = o.log ?? (() => {});
    const dir = config.vsock ? undefined : mkdtempSync(join(tmpdir(), 'tsvmm-vm-'));
    const cfg: MachineConfig = dir ? { ...config, vsock: { cid: GUEST_CID, udsPath: join(dir, 'vsock') } } : config;
    let control: Control<Machine> | undefined;
    try {
      control = await Control.open<Machine>({ 'api-sock': o.apiSock, quiet: true }, () => Promise.reject(new Error('this VM is started by its owner, not through the API')));
      const scan = new LineScanner();
      const machine = await Machine.start(cfg, {
        console: (b) => {
          scan.push(b);
          o.console?.(b);
        },
        log,
        progress: o.progress,
        startup: o.startup,
      });
      control.attach(machine);
      return new AgentVm(machine, control, dir, scan);
    } catch (e) {
      await control?.close();
      if (dir) rmSync(dir, { recursive: true, force: true });
      throw e;
    }
  }

  /**
   * Resolves once the agent answered; rejects with why it never will, or — past `timeoutMs`
   * or once `signal` aborts — with an AgentTimeoutError saying what the machine was doing.
   */
  async whenReady(o: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<void> {
    const signals = [o.signal, o.timeoutMs === undefined ? undefined : AbortSignal.timeout(o.timeoutMs)].filter((x): x is AbortSignal => x !== undefined);
    if (!signals.length) return this.ready;
    const stop = AbortSignal.any(signals);
    let onAbort: (() => void) | undefined;
    const gaveUp = new Promise<'gave-up'>((r) => {
      onAbort = () => r('gave-up');
      if (stop.aborted) onAbort();
      else stop.addEventListener('abort', onAbort, { once: true });
    });
    try {
      if ((await Promise.race([this.ready.then(() => 'ready' as const), gaveUp])) === 'ready') return;
    } finally {
      stop.removeEventListener('abort', onAbort!);
    }
    const waited = ((now() - this.startedAt) / 1000).toFixed(1);
    const why = o.signal?.aborted ? `was interrupted after ${waited} s` : `did not answer within ${o.timeoutMs! / 1000} s`;
    throw new AgentTimeoutError(`the guest agent ${why} of booting${this.initReadyAt === undefined ? ' (the init never said ready)' : ''}`, await this.diagnose());
  }

  /** What the machine is doing (Machine.diagnose()), bounded in time; undefined if that failed. */
  diagnose(): Promise<MachineDiagnosis | undefined> {
    return diagnoseBounded(() => this.machine.diagnose());
  }

  private onConsoleLine(line: string): void {
    const m = parseInitMarker(line);
    if (m?.kind === 'ready' && this.initReadyAt === undefined) {
      this.initReadyAt = now();
      this.checkVsockBound();
    } else if (/^tsvmm-init: (warning|error)/.test(line.trim())) {
      this.initProblems.push(line.trim());
    }
  }

  /**
   * The init loads the vsock modules before it says `ready`, and a built-in driver binds during
   * the kernel's boot: by then the device's status has DRIVER_OK, or the guest has no driver for
   * it. Waiting for an agent that cannot be reached would only end in a timeout.
   */
  private checkVsockBound(): void {
    const vsock = this.machine.transports.find((t) => t.name === 'virtio-vsock')?.transport;
    if (!vsock) return;
    const deadline = now() + VSOCK_BIND_GRACE_MS;
    const poll = (): void => {
      if (this.agentAt !== undefined || this.abort.signal.aborted) return;
      if (vsock.deviceStatus & STATUS.DRIVER_OK) return;
      if (now() < deadline) {
        setTimeout(poll, 50).unref();
        return;
      }
      this.unreachable = new AgentUnreachableError(
        'the guest booted (its init is ready) but did not bind the virtio-vsock device, so its agent cannot be reached: ' +
        'the kernel lacks CONFIG_VIRTIO_VSOCKETS (or CONFIG_VIRTIO_MMIO), or they are modules that were not given (--modules DIR)' +
        (this.initProblems.length ? `; the init said: ${this.initProblems.join('; ')}` : ''),
      );
      this.abort.abort();
    };
    poll();
  }

  private async waitForAgent(): Promise<void> {
    await waitForAgent(this.client, Number.POSITIVE_INFINITY, () => {
      if (this.unreachable) return this.unreachable;
      if (this.ended) return new AgentUnreachableError(`the VM ended (${this.ended.detail}) before its agent answered`);
      return false;
    }, this.abort.signal);
    this.agentAt = now();
  }

  /**
   * What to say when talking to the agent failed: when the VM is ending, why (a virtiofsd
   * that died, a guest poweroff, ...) before the connection error that followed from it.
   */
  describeFailure(e: Error): string {
    const end = this.machine.ending;
    return end ? `the VM ended (${end.detail}); ${e.message}` : e.message;
  }

  /** Stops the VM (if still running) and releases everything; resolves with how it ended. */
  close(status: ExitStatus = { code: EXIT.POWEROFF, reason: 'poweroff', detail: 'stopped by its owner' }): Promise<ExitStatus> {
    this.closing ??= (async () => {
      this.abort.abort();
      this.machine.finish(status);
      const s = await this.machine.exited;
      await this.control.close();
      if (this.dir) rmSync(this.dir, { recursive: true, force: true });
      return s;
    })();
    return this.closing;
  }
}

/**
 * Pings the agent until it answers, while the guest is still booting (connection refused or
 * reset). `failed` ends the wait: an Error is thrown as it is, `true` throws the last ping's
 * error; so does `signal`. Past the deadline: an AgentTimeoutError with `diagnose()`'s
 * answer when it is given (Machine.diagnose: where the guest hangs), else the last ping's error.
 */
export async function waitForAgent(
  client: AgentClient, deadline: number, failed: () => boolean | Error, signal?: AbortSignal, diagnose?: () => Promise<MachineDiagnosis>,
): Promise<void> {
  const t0 = Date.now();
  let delay = 50;
  for (;;) {
    try {
      // A connect made while the guest driver is still probing can be dropped silently by the
      // device reset Linux does at probe time: bound each attempt, then try again.
      const attempt = AbortSignal.timeout(5000);
      await client.ping({ signal: signal ? AbortSignal.any([signal, attempt]) : attempt });
      return;
    } catch (e) {
      const why = failed();
      if (why instanceof Error) throw why;
      if (why || signal?.aborted) throw e;
      if (Date.now() > deadline) {
        if (!diagnose) throw e;
        const what = `the guest agent did not answer within ${Math.round((deadline - t0) / 1000)} s (last attempt: ${(e as Error).message})`;
        throw new AgentTimeoutError(what, await diagnoseBounded(diagnose));
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 500);
    }
  }
}

/** Splits console bytes into lines (for the marker scan), keeping at most one line's tail. */
class LineScanner {
  onLine: (line: string) => void = () => {};
  private partial = '';

  push(b: Uint8Array): void {
    const text = this.partial + Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('latin1');
    const lines = text.split('\n');
    this.partial = (lines.pop() ?? '').slice(-4096);
    for (const l of lines) this.onLine(l);
  }
}
