// The VMM's own start, from exec to the first KVM_RUN, in phases (issue 16): Node's start (to
// bin/tsvmm.js), loading tsvmm's modules (koffi apart), the configuration (the default guest's
// scripts included), KVM, guest memory, devices, ACPI, the kernel image, the vCPUs, and their
// threads up to KVM_RUN. `tsvmm run --log-level debug` logs it; `exec --json` reports it.
// Owns only the clock: callers say when a phase ends.

import { koffiLoadMs } from '../kvm/libc';

/** When bin/tsvmm.js began (ms since the process started), set by it before loading the bundle. */
const binAt = (): number | undefined => (globalThis as { __tsvmmBinAt?: number }).__tsvmmBinAt;

export class StartupClock {
  /** Each phase's length in ms, in order. */
  readonly phases: [string, number][] = [];
  private last: number;

  /** Starts where the process did: the time so far is Node's start and the module load. */
  constructor() {
    const now = performance.now();
    const bin = binAt();
    if (bin !== undefined) this.phases.push(['node start', bin], ['module load', now - bin - koffiLoadMs()], ['koffi', koffiLoadMs()]);
    else this.phases.push(['node start + module load', now]);
    this.last = now;
  }

  /** Ends the phase `name` now. */
  end(name: string): void {
    const now = performance.now();
    this.phases.push([name, now - this.last]);
    this.last = now;
  }

  /** `first KVM_RUN after 812 ms: node start 120, module load 300, …` */
  summary(): string {
    const total = this.phases.reduce((s, [, ms]) => s + ms, 0);
    return `first KVM_RUN ${total.toFixed(0)} ms after exec: ${this.phases.map(([n, ms]) => `${n} ${ms.toFixed(0)}`).join(', ')} (ms)`;
  }

  toJSON(): Record<string, number> {
    return Object.fromEntries(this.phases.map(([n, ms]) => [n, Math.round(ms * 10) / 10]));
  }
}
