// What `tsvmm run` adds around a machine for control and observation: the logger (--log-path,
// --log-level), the API socket (--api-sock, --wait), the config file (--config-file), the
// metrics file (--metrics-path, --metrics-interval) and the `tsvmm ps` registry entry. Owns
// their lifetimes: everything opened here is closed by close(), and files are removed at exit.
// It must not create the machine itself (the caller's `start` does).

import { resolve } from 'node:path';
import type { MachineConfig } from '../config';
import { Logger, newVmId, parseLevel, stderrLine } from '../log';
import { collectMetrics, MetricsWriter } from '../metrics';
import { ApiServer, ApiSocketError } from './http';
import type { ApiMachine } from './machine';
import { readConfigFile, VmController } from './resources';
import { register } from './registry';
import { EXIT, UsageError } from '../../lib/errors';

export interface ControlFlags {
  'api-sock'?: string;
  'config-file'?: string;
  'log-path'?: string;
  'log-level'?: string;
  'metrics-path'?: string;
  'metrics-interval'?: string;
  wait?: boolean;
  quiet?: boolean;
}


export class Control<M extends ApiMachine> {
  readonly id = newVmId();
  /** The plain log function handed to the machine; `tsvmm: msg` on stderr unless --log-* is given. */
  readonly log: (m: string) => void;
  /** Debug lines: only with --log-level debug. */
  readonly debug: (m: string) => void = () => {};
  /** Why a VM failed (a crash report, a failed end): said even under --quiet, as QEMU's errors are. */
  readonly error: (m: string) => void;
  private logger?: Logger;
  private api?: ApiServer;
  private metrics?: MetricsWriter;
  private unregister?: () => void;
  readonly controller: VmController<M>;

  private constructor(private readonly flags: ControlFlags, start: (c: MachineConfig) => Promise<M>, defaults: Partial<MachineConfig> | undefined) {
    if (flags['log-path'] !== undefined || flags['log-level'] !== undefined) {
      this.logger = new Logger({ id: this.id, level: flags['log-level'] === undefined ? 'info' : parseLevel(flags['log-level']), path: flags['log-path'] });
      this.log = this.logger.fn('vmm');
      this.debug = this.logger.fn('vmm', 'debug');
      this.error = this.logger.fn('vmm', 'error');
    } else {
      this.log = flags.quiet ? () => {} : stderrLine;
      this.error = stderrLine;
    }
    this.controller = new VmController<M>({
      id: this.id, defaults, log: this.log,
      // Without --wait the command line starts the machine; InstanceStart must not race it.
      start: flags.wait ? start : () => Promise.reject(new Error('this VM is started from the command line; use tsvmm run --wait to start it through the API')),
      flushMetrics: flags['metrics-path'] === undefined ? undefined : () => this.metrics?.flush(),
    });
  }

  /** Opens the logger and, with --api-sock, the API socket (the VM is not started yet). */
  static async open<M extends ApiMachine>(flags: ControlFlags, start: (c: MachineConfig) => Promise<M>, defaults?: Partial<MachineConfig>): Promise<Control<M>> {
    if (flags.wait && flags['api-sock'] === undefined) throw new UsageError('--wait needs --api-sock (the machine is configured and started through the API)');
    if (flags.wait && flags['config-file'] !== undefined) throw new UsageError('--wait and --config-file exclude each other');
    const interval = flags['metrics-interval'] === undefined ? 60 : Number(flags['metrics-interval']);
    if (!(interval > 0) || !Number.isFinite(interval)) throw new UsageError(`--metrics-interval '${flags['metrics-interval']}' must be a positive number of seconds`);
    if (flags['metrics-interval'] !== undefined && flags['metrics-path'] === undefined) throw new UsageError('--metrics-interval needs --metrics-path');
    const c = new Control<M>(flags, start, defaults);
    if (flags['api-sock'] !== undefined) {
      const path = resolve(flags['api-sock']);
      c.api = await ApiServer.listen({ path, handle: (r) => c.controller.handle(r), agent: () => c.controller.agentStream(), describe: () => c.controller.describe(), log: c.log,
        onDeath: (why) => c.apiDied(why),
      });
      c.log(`API listening on ${path} (VM id ${c.id})`);
    }
    c.register(defaults);
    return c;
  }

  /** The configuration from --config-file, or undefined without it. */
  configFromFile(base: Partial<MachineConfig>): MachineConfig | undefined {
    const f = this.flags['config-file'];
    return f === undefined ? undefined : readConfigFile(f, base);
  }

  /**
   * The API thread died on its own. Fatal, as in Firecracker (whose API server thread's end
   * ends the process): nobody can control, inspect or stop this VM through its socket any more,
   * and a VMM its orchestrator cannot reach must not run on unseen. A running machine is
   * finished with exit status 1 (the normal way out: the terminal given back, the socket file
   * removed at close); under --wait, waitForStart() throws.
   */
  private apiDied(why: string): void {
    const detail = `the API thread died (${why}): the VM cannot be controlled through ${this.api?.path} any more; stopping it`;
    this.log(detail);
    const err = new ApiSocketError(detail);
    this.apiDeath.reject(err);
    this.controller.machine?.finish({ code: EXIT.ERROR, reason: 'error', detail });
  }

  private readonly apiDeath = (() => {
    let reject!: (e: Error) => void;
    const p = new Promise<never>((_, r) => (reject = r));
    p.catch(() => {}); // observed by waitForStart only
    return { promise: p, reject };
  })();

  /** --wait: resolves with the machine after InstanceStart, or with the signal that came first; throws if the API thread died first. */
  async waitForStart(): Promise<M | NodeJS.Signals> {
    let onSig: ((s: NodeJS.Signals) => void) | undefined;
    const signalled = new Promise<NodeJS.Signals>((r) => (onSig = r));
    process.on('SIGINT', onSig!);
    process.on('SIGTERM', onSig!);
    this.log('waiting for PUT /actions {"action_type": "InstanceStart"}');
    try {
      const r = await Promise.race([this.controller.started, signalled, this.apiDeath.promise]);
      if (typeof r !== 'string') this.machineStarted(r);
      return r;
    } finally {
      process.off('SIGINT', onSig!);
      process.off('SIGTERM', onSig!);
    }
  }

  /** A machine started from flags or the config file. */
  attach(m: M): void {
    this.controller.attach(m);
    // Running, with this config: the API thread's describe answers say so from now on.
    this.api?.publish();
    this.machineStarted(m);
  }

  private machineStarted(m: M): void {
    this.register(m.config);
    const path = this.flags['metrics-path'];
    if (path !== undefined) {
      const interval = this.flags['metrics-interval'] === undefined ? 60 : Number(this.flags['metrics-interval']);
      this.metrics = new MetricsWriter(path, interval, () => collectMetrics(m, this.id));
    }
  }

  private register(c: Partial<MachineConfig> | undefined): void {
    try {
      this.unregister?.();
      this.unregister = register({
        id: this.id, pid: process.pid, api_sock: this.api?.path ?? null, started: new Date().toISOString(),
        kernel: c?.kernel ?? null, vcpus: c?.vcpus ?? null,
      });
    } catch (e) {
      this.log(`not listed in 'tsvmm ps': ${(e as Error).message}`);
    }
  }

  async close(): Promise<void> {
    this.metrics?.stop();
    this.metrics = undefined;
    await this.api?.close();
    this.unregister?.();
    this.logger?.close();
  }
}
