// Checks binary layouts against their source of truth, a C header: a generated C program prints
// each C expression (a constant, sizeof, offsetof), and every value is compared with the one
// tsvmm uses. Needs gcc and the headers (linux-libc-dev, libc6-dev), not KVM.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Fields, Struct } from '../../lib/struct';

export class AbiExpectations {
  readonly values = new Map<string, number>();

  /** `cExpr` (e.g. "KVM_RUN", "sizeof(struct kvm_regs)") must evaluate to `value`. */
  want(cExpr: string, value: number): void {
    this.values.set(cExpr, value);
  }

  /** The struct's size (unless `size: false`) and every field's offset and width, by C name. */
  struct(s: Struct<Fields>, opts: { size?: boolean; cType?: string } = {}): void {
    const type = opts.cType ?? `struct ${s.name}`;
    if (opts.size !== false) this.want(`sizeof(${type})`, s.size);
    for (const [, c, offset, width] of s.layout()) {
      this.want(`offsetof(${type}, ${c})`, offset);
      this.want(`sizeof(((${type} *)0)->${c})`, width);
    }
  }

  /**
   * Compiles one program including `headers` (system or `-I` dirs) and returns every expression
   * whose value differs, as "expr: header N, tsvmm M" (empty when all match).
   */
  mismatches(headers: string[], includeDirs: string[] = []): string[] {
    const exprs = [...this.values.keys()];
    const actual = probe(headers, includeDirs, exprs);
    const hex = (n: number | undefined) => `${n} (0x${n?.toString(16)})`;
    return exprs.filter((e) => actual.get(e) !== this.values.get(e)).map((e) => `${e}: header ${hex(actual.get(e))}, tsvmm ${hex(this.values.get(e))}`);
  }

  get count(): number {
    return this.values.size;
  }
}

function probe(headers: string[], includeDirs: string[], exprs: string[]): Map<string, number> {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-abi-'));
  try {
    const lines = exprs.map((e) => `  printf("%llu\\n", (unsigned long long)(${e}));`).join('\n');
    // _GNU_SOURCE: glibc's struct ucred and friends are GNU extensions.
    const includes = ['#define _GNU_SOURCE', ...['stddef.h', 'stdio.h', ...headers].map((h) => `#include <${h}>`)].join('\n');
    writeFileSync(join(dir, 'abi.c'), `${includes}\nint main(void) {\n${lines}\n  return 0;\n}\n`);
    execFileSync('gcc', ['-Wall', '-Werror', ...includeDirs.map((d) => `-I${d}`), '-o', join(dir, 'abi'), join(dir, 'abi.c')], { stdio: ['ignore', 'pipe', 'pipe'] });
    const out = execFileSync(join(dir, 'abi'), { encoding: 'utf8' }).trim().split('\n');
    if (out.length !== exprs.length) throw new Error(`the probe printed ${out.length} lines for ${exprs.length} expressions`);
    return new Map(exprs.map((e, i) => [e, Number(out[i])]));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
