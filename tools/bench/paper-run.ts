// The guest side of the paper's experiment (tools/bench/paper.mjs drives it): boots one guest
// with a given pin policy, injects the built-in `affinity` eBPF program when the policy is
// `hinted`, then serves requests on stdin, one JSON line each, `{"args": [...spscq args]}`,
// by running guest/spscq in the guest and answering one JSON line on stdout with spscq's
// result, the vCPU placement seen halfway through the run and the scheduler counters. EOF
// on stdin powers the guest off. Owns only its temp dir; logs go to stderr.
//
//   node dist/paper-run.js --pin none|static|hinted [--vcpus N] [--memory SIZE] [--timeout SEC]
//
// stdout protocol: first `{"ready": true, "pin", "vcpus", "bootSeconds", "progIds"}` (or
// `{"ready": false, "error"}` and exit 1), then one `{"ok": true, "result", "placement",
// "counters"}` or `{"ok": false, "error", "stdout", "stderr", "exitCode"}` per request.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { AgentClient } from '../../vmm/agent/client';
import { affinityPackage } from '../../bpf/programs/affinity';
import { checkKvm, machineConfig } from '../../vmm/cli-options';
import { AGENT_PORT, waitForAgent } from '../../vmm/exec';
import { Machine } from '../../vmm/machine';
import { EXIT } from '../../lib/errors';

interface Request {
  args: string[];
  /** Seconds after start at which to sample the vCPU placement (default: half of -d). */
  sampleAt?: number;
}

export interface Placement {
  vcpu: number;
  cpus: number[];
  kind: string;
  tasks: string[];
}

const reply = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);
const log = (m: string) => process.stderr.write(`paper-run: ${m}\n`);

function durationOf(args: readonly string[]): number {
  const i = args.indexOf('-d');
  const d = i >= 0 ? Number(args[i + 1]) : 5;
  return Number.isFinite(d) && d > 0 ? d : 5;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: { pin: { type: 'string' }, vcpus: { type: 'string' }, memory: { type: 'string' }, timeout: { type: 'string' }, console: { type: 'boolean' } },
    strict: true,
  });
  const pin = values.pin ?? 'none';
  const timeoutMs = Number(values.timeout ?? '600') * 1000;
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-paper-'));
  const config = await machineConfig({ vcpus: values.vcpus ?? '2', memory: values.memory ?? '512M', pin, vsock: `cid=3,uds=${join(dir, 'vsock')}` }, log);
  checkKvm();
  const t0 = performance.now();
  const machine = await Machine.start(config, { console: values.console ? (b) => process.stderr.write(b) : () => {}, log });
  let ended: string | undefined;
  void machine.exited.then((s) => (ended = s.detail));
  try {
    const client = new AgentClient(() => machine.vsock!.connect(AGENT_PORT));
    await waitForAgent(client, Date.now() + timeoutMs, () => ended !== undefined);
    let progIds: readonly number[] = [];
    if (pin === 'hinted') {
      const r = await machine.paravirt!.load(affinityPackage());
      if (!r.ok) throw new Error(`the guest refused or failed to load 'affinity' (${r.outcome}): ${r.text}`);
      progIds = r.progIds;
    }
    reply({ ready: true, pin, vcpus: config.vcpus, bootSeconds: (performance.now() - t0) / 1000, progIds });

    const sched = machine.scheduler!;
    for await (const line of createInterface({ input: process.stdin })) {
      if (!line.trim()) continue;
      if (ended) throw new Error(`the VM ended: ${ended}`);
      const req = JSON.parse(line) as Request;
      let out = '';
      let err = '';
      let placement: Placement[] = [];
      const sampleMs = (req.sampleAt ?? durationOf(req.args) / 2) * 1000;
      const handle = client.start({
        argv: ['spscq', ...req.args],
        onStdout: (c) => (out += c.toString()),
        onStderr: (c) => (err += c.toString()),
      });
      await handle.pid;
      const timer = setTimeout(() => {
        placement = sched.table().map((r) => ({ vcpu: r.vcpu, cpus: [...r.cpus], kind: r.kind, tasks: r.tasks.map((t) => `${t.comm}[${t.tid}]`) }));
      }, sampleMs);
      const res = await handle.result.finally(() => clearTimeout(timer));
      const last = out.trim().split('\n').pop() ?? '';
      let result: unknown;
      try {
        result = JSON.parse(last);
      } catch {
        result = undefined;
      }
      if (res.exitCode === 0 && result !== undefined) reply({ ok: true, result, placement, counters: sched.counters });
      else reply({ ok: false, error: `spscq exited ${res.exitCode ?? res.signal}`, exitCode: res.exitCode, result, stdout: out, stderr: err, placement });
    }
    return 0;
  } catch (e) {
    reply({ ready: false, ok: false, error: (e as Error).message });
    return 1;
  } finally {
    machine.finish({ code: EXIT.POWEROFF, reason: 'poweroff', detail: 'paper run finished' });
    await machine.exited;
    rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (e: Error) => {
    reply({ ready: false, ok: false, error: e.message });
    process.exit(1);
  },
);
