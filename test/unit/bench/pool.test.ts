// Pooling benchmark result files (tools/bench/lib.mjs pooledRuns, pairedRatios): the rounds of
// one file never pair with another file's, a file of another bench is refused.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pairedRatios, pooledRuns, type BenchRun } from '../../../tools/bench/lib.mjs';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-pool-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, bench: string, runs: BenchRun[]): string {
  const path = join(dir, name);
  writeFileSync(path, JSON.stringify({ bench, env: { date: name }, config: { files: 10 }, runs }));
  return path;
}

test('two files: their runs tagged by file, rounds paired within a file only', () => {
  // Round 1 of A pairs 10/20; round 1 of B pairs 30/10; A's round 2 lacks its QEMU run.
  const a = file('a.json', 'virtiofs', [
    { vmm: 'tsvmm', round: 1, ok: true, v: 10 }, { vmm: 'qemu', round: 1, ok: true, v: 20 },
    { vmm: 'tsvmm', round: 2, ok: true, v: 99 }, { vmm: 'qemu', round: 2, ok: false, v: 1 },
  ]);
  const b = file('b.json', 'virtiofs', [{ vmm: 'qemu', round: 1, ok: true, v: 10 }, { vmm: 'tsvmm', round: 1, ok: true, v: 30 }]);
  const { runs, sources } = pooledRuns(`${a},${b}`, 'virtiofs', (d) => ({ files: (d.config as { files: number }).files }));
  assert.equal(sources, [{ file: a, date: 'a.json', files: 10, runs: 4 }, { file: b, date: 'b.json', files: 10, runs: 2 }]);
  assert.equal(runs.map((r) => r.source), [a, a, a, a, b, b]);
  assert.equal(pairedRatios(runs, (r) => r.v as number), { n: 2, min: 0.5, median: 1.75, max: 3 });
});

test('a file of another bench is refused by name', () => {
  const c = file('c.json', 'blk', []);
  assert.throws(() => pooledRuns(c, 'virtiofs'), /c\.json: not a virtiofs bench result \(bench: blk\)/);
});

test.run();
