// How `tsvmm` ends on an error (vmm/cli.ts): tsvmm's own errors print one line and exit with the
// code their class carries (usage 2 with a pointer to --help, the rest 1); nothing here needs KVM.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

process.env.TSVMM_NO_MAIN = '1';
const { main } = await import('../../../vmm/cli');

/** Runs main(argv) with stderr captured. */
async function run(argv: string[]): Promise<{ code: number; err: string }> {
  const write = process.stderr.write.bind(process.stderr);
  let err = '';
  process.stderr.write = ((chunk: string | Uint8Array) => { err += String(chunk); return true; }) as typeof process.stderr.write;
  try {
    return { code: await main(argv), err };
  } finally {
    process.stderr.write = write;
  }
}

test('usage errors (flags, values, commands) exit 2 with one line and a pointer to --help', async () => {
  for (const argv of [['nosuch'], ['run', '--vcpus', 'many'], ['run', '--bogus'], ['run', '--vsock', 'cid=1,uds=/tmp/x.sock'], ['run', '--drive', 'file=x.img'], ['run', '--drive', 'path=a,root', '--drive', 'path=b,root'], ['exec', '--drive', 'path=a,id=bad id', '--', 'true'], ['sched', 'frobnicate', '--api-sock', '/nonexistent']]) {
    const r = await run(argv);
    assert.is(r.code, 2, `${argv.join(' ')}: ${r.err}`);
    assert.match(r.err, /^tsvmm: .+\nTry 'tsvmm --help'\.\n$/, argv.join(' '));
  }
});

test('other tsvmm errors exit 1 with one line, no stack', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-cli-'));
  try {
    const r = await run(['bpf', 'list', '--api-sock', join(dir, 'none.sock')]);
    assert.is(r.code, 1, r.err);
    assert.match(r.err, /^tsvmm: [^\n]+\n$/);
    assert.not.match(r.err, /    at /);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('CMD --help on a control command prints its usage lines and exits 0, with no VM around', async () => {
  const write = process.stdout.write.bind(process.stdout);
  for (const [argv, want, notWant] of [
    [['hints', '--help'], /^tsvmm hints watch .*\ntsvmm hints record .*\n +every hint record/, /tsvmm bpf/],
    [['bpf', 'load', '-h'], /^tsvmm bpf load [^\n]*\n(.*\n)*tsvmm bpf map-set [^\n]*\n +KEY, VALUE/, /tsvmm vcpu/],
    [['halt-poll', '--help'], /^tsvmm halt-poll \[--api-sock S\] \[NANOSECONDS\]\n +talk to a VM/, /tsvmm metrics/],
  ] as const) {
    let out = '';
    process.stdout.write = ((chunk: string | Uint8Array) => { out += String(chunk); return true; }) as typeof process.stdout.write;
    let r: { code: number; err: string };
    try {
      r = await run([...argv]);
    } finally {
      process.stdout.write = write;
    }
    assert.is(r.code, 0, `${argv.join(' ')}: ${r.err}`);
    assert.is(r.err, '');
    assert.match(out, want, out);
    assert.not.match(out, notWant, out);
  }
});

test('the built CLI maps the same way (process exit status)', () => {
  const cli = join(import.meta.dirname ?? '', '../../../tsvmm.js');
  const env = { ...process.env };
  delete env.TSVMM_NO_MAIN;
  const r = spawnSync(process.execPath, [cli, 'run', '--vcpus', 'many'], { encoding: 'utf8', env });
  assert.is(r.status, 2, r.stderr);
  assert.match(r.stderr, /Try 'tsvmm --help'/);
});

test.run();
