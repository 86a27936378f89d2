// The parts of the exit-rate benchmark (tools/bench/exits.ts) that need no KVM, kept apart so
// unit tests can import them: the guest code and the VM layout — defined only here; the C twin
// (tools/bench/exit-loop.c) receives them on its command line — the options, and building
// the twin. Lives in a folder because tools/build.mjs bundles every tools/bench/*.ts as a
// benchmark of its own.

import { spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, mkdirSync, mkdtempSync, renameSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { UsageError } from '../../../lib/errors';

/** One RAM slot at guest physical 0; real mode, CS base 0, code at `loadAddr`. */
export const GUEST = {
  memBytes: 0x1_0000,
  loadAddr: 0x1000,
  /** The POST port: no tsvmm device claims it, so a vCPU worker answers it without a hop. */
  port: 0x80,
} as const;

/**
 * `mov ecx, n; l: out port, al; dec ecx; jnz l; hlt` as 16-bit code: n port-I/O exits, then
 * a HLT exit (without an in-kernel irqchip KVM reports every HLT to user space).
 */
export function exitLoopCode(n: number, port: number = GUEST.port): Uint8Array {
  if (!Number.isInteger(n) || n < 1 || n > 0xffff_ffff) throw new RangeError(`exit count ${n} is not in 1..2^32-1`);
  if (!Number.isInteger(port) || port < 0 || port > 0xff) throw new RangeError(`port ${port} does not fit out imm8`);
  const code = new Uint8Array([
    0x66, 0xb9, 0, 0, 0, 0, // mov ecx, imm32 (operand-size prefix: this is 16-bit code)
    0xe6, port, //             l: out imm8, al
    0x66, 0x49, //             dec ecx
    0x75, 0xfa, //             jnz l (rel8 -6: back to the out)
    0xf4, //                   hlt
  ]);
  new DataView(code.buffer).setUint32(2, n, true);
  return code;
}

export const toHex = (b: Uint8Array) => Buffer.from(b).toString('hex');


export interface ExitsOptions {
  exits: number;
  /** Fewer by default: in the nested sandbox one forwarded exit costs milliseconds. */
  forwardedExits: number;
  runs: number;
  out?: string;
  localOnly: boolean;
  help: boolean;
}

export const USAGE = `usage: node dist/bench/exits.js [--exits N] [--forwarded-exits N] [--runs N] [--local-only] [--out FILE]
  --exits N            port-I/O exits per run of the C twin and of tsvmm's worker (default 100000)
  --forwarded-exits N  exits per run of the mode that forwards them to main (default: --exits / 10)
  --runs N             rounds; each runs every mode, the order flipping every round (default 3)
  --local-only         skip the forwarded modes (tsvmm's and the C twin's)
  --out FILE           write every run, the summary and host info as JSON`;

function integer(v: string | undefined, name: string, dflt: number, max: number): number {
  if (v === undefined) return dflt;
  if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > max) throw new UsageError(`--${name} must be an integer in 1..${max}, got '${v}'`);
  return Number(v);
}

export function parseExitsArgs(argv: string[]): ExitsOptions {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      options: {
        exits: { type: 'string' }, 'forwarded-exits': { type: 'string' }, runs: { type: 'string' }, out: { type: 'string' }, 'local-only': { type: 'boolean' }, help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const exits = integer(values.exits, 'exits', 100_000, 0xffff_ffff);
  return {
    exits,
    forwardedExits: integer(values['forwarded-exits'], 'forwarded-exits', Math.max(1, Math.round(exits / 10)), 0xffff_ffff),
    runs: integer(values.runs, 'runs', 3, 1000),
    out: values.out,
    localOnly: values['local-only'] ?? false,
    help: values.help ?? false,
  };
}

/**
 * The C twin's binary: dist/bench/exit-loop, rebuilt with $CC (default gcc) when older than its
 * source. Where dist/ is read-only (inside the sandbox) a stale or missing binary is built into
 * a temp dir instead.
 */
export function twinBinary(root: string): string {
  const src = join(root, 'tools/bench/exit-loop.c');
  const bin = join(root, 'dist/bench/exit-loop');
  if (existsSync(bin) && statSync(bin).mtimeMs >= statSync(src).mtimeMs) return bin;
  let out = bin;
  try {
    mkdirSync(dirname(bin), { recursive: true });
    accessSync(dirname(bin), constants.W_OK);
  } catch {
    out = join(mkdtempSync(join(tmpdir(), 'tsvmm-exit-loop-')), 'exit-loop');
  }
  // A private name and a rename: two benchmark or test processes may build at once.
  const tmp = `${out}.${process.pid}.tmp`;
  const cc = process.env.CC || 'gcc';
  const r = spawnSync(cc, ['-O2', '-Wall', '-Wextra', '-static', '-o', tmp, src], { encoding: 'utf8' });
  if (r.error || r.status !== 0) throw new Error(`building the C twin failed (${cc} ${src}): ${r.error?.message ?? r.stderr.trim()}`);
  renameSync(tmp, out);
  return out;
}
