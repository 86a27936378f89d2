// Helpers shared by the bpf unit tests: find LLVM tools, run them, temp files.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectRoot } from '../../../vmm/default-guest';

export const FIXTURES = join(projectRoot(), 'test/unit/bpf/fixtures');

/** First of `names` found on PATH, or null. */
export function tool(...names: string[]): string | null {
  for (const n of names) {
    if (spawnSync('sh', ['-c', `command -v ${n}`]).status === 0) return n;
  }
  return null;
}
export const CLANG = tool('clang', 'clang-16', 'clang-15', 'clang-14');
export const LLVM_MC = tool('llvm-mc', 'llvm-mc-16', 'llvm-mc-15', 'llvm-mc-14');
export const OBJDUMP = tool('llvm-objdump', 'llvm-objdump-16', 'llvm-objdump-15', 'llvm-objdump-14');
// Why a test that needs one of them cannot run here (test/needs.ts), or undefined when it can.
const absent = (what: string, found: string | null): string | undefined => (found ? undefined : `needs ${what} (tools/setup.sh installs it)`);
export const NO_CLANG = absent('clang', CLANG);
export const NO_LLVM_MC = absent('llvm-mc', LLVM_MC);
export const NO_OBJDUMP = absent('llvm-objdump', OBJDUMP);

export function run(cmd: string, args: string[], input?: string): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r.stdout;
}

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-bpf-'));
export const tmp = (name: string): string => join(dir, name);

/** Compile C with clang -target bpf -O2 -g -c; returns the object bytes. */
export function compileBpf(name: string, source: string, extra: string[] = []): Uint8Array {
  const c = tmp(`${name}.c`);
  writeFileSync(c, source);
  run(CLANG!, ['-target', 'bpf', '-O2', '-g', '-mcpu=v3', '-c', c, '-o', tmp(`${name}.o`), ...extra]);
  return new Uint8Array(readFileSync(tmp(`${name}.o`)));
}

/** llvm-objdump -d lines: { slot, text } for every instruction line. */
export function objdump(objPath: string, section: string): Array<{ slot: number; text: string }> {
  const out = run(OBJDUMP!, ['-d', `--section=${section}`, objPath]);
  const lines: Array<{ slot: number; text: string }> = [];
  for (const l of out.split('\n')) {
    const m = /^\s*(\d+):\t(?:[0-9a-f]{2} ?)+\t(.*)$/.exec(l);
    if (m) lines.push({ slot: Number(m[1]), text: m[2]!.trim() });
  }
  return lines;
}
