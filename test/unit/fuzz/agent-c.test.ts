// Fuzz target: the guest agent (guest/agent.c) parsing host frames, built with
// -fsanitize=address,undefined: any out-of-bounds access, use after free or undefined
// behaviour aborts the run with the sanitizer's report. The harness (agent-harness.c, next to
// this file) includes agent.c itself and runs its serve() on seeded frame sequences; the case
// budget and seed come from lib.ts like every target's.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { repoRoot } from '../agent/harness';
import { caseBudget, report, seedFor } from './lib';

test('agent.c parsing host frames, under ASan and UBSan', () => {
  const root = repoRoot();
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-agent-fuzz-'));
  try {
    const bin = join(dir, 'agent-fuzz');
    const guest = join(root, 'guest');
    execFileSync('gcc', [
      '-O1', '-g', '-fsanitize=address,undefined', '-fno-sanitize-recover=all', '-fno-omit-frame-pointer', `-I${guest}`,
      join(root, 'test/unit/fuzz/agent-harness.c'), ...['ebpf.c', 'bpfload.c', 'replay.c', 'sha256.c', 'log.c'].map((f) => join(guest, f)), '-o', bin,
    ], { stdio: ['ignore', 'ignore', 'inherit'] });
    const cases = caseBudget(500);
    const seed = seedFor('agent-c');
    const t0 = performance.now();
    const r = spawnSync(bin, [String(cases), `0x${seed.toString(16)}`], {
      encoding: 'utf8', maxBuffer: 64 << 20,
      env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=0:quarantine_size_mb=32', UBSAN_OPTIONS: 'print_stacktrace=1' },
    });
    const tail = (r.stderr ?? '').split('\n').slice(-40).join('\n');
    assert.is(r.status, 0, `agent-fuzz exited ${r.status} (signal ${r.signal}); replay: ${bin} ${cases} 0x${seed.toString(16)}\n${tail}`);
    const m = /FUZZ agent-c cases=(\d+) crashes=0 .*ended-ok=(\d+) ended-error=(\d+)/.exec(r.stdout);
    assert.ok(m, r.stdout);
    assert.is(Number(m![1]), cases);
    assert.ok(Number(m![2]) > 0 && Number(m![3]) > 0, 'both clean ends and errors were reached');
    report('agent-c', cases, seed, performance.now() - t0, `ended-ok=${m![2]} ended-error=${m![3]}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
