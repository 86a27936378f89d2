// The exit-rate benchmark's KVM-free parts (tools/bench/exits/lib.ts): the guest code as
// objdump decodes it, the options, the median, and the C twin's argument checks (which run
// before it opens /dev/kvm). Needs gcc and objdump (binutils), as CI has.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectRoot } from '../../../vmm/default-guest';
import { stats } from '../../../tools/bench/lib.mjs';
import { GUEST, exitLoopCode, parseExitsArgs, toHex, twinBinary } from '../../../tools/bench/exits/lib';
import { UsageError } from '../../../lib/errors';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-exits-test-'));

/** objdump's 16-bit disassembly as `offset: instruction` lines. */
function disassemble(code: Uint8Array): string[] {
  const f = join(dir, 'code.bin');
  writeFileSync(f, code);
  const out = execFileSync('objdump', ['-D', '-b', 'binary', '-m', 'i8086', f], { encoding: 'utf8' });
  return [...out.matchAll(/^\s+([0-9a-f]+):\t(?:[0-9a-f]{2} )+\s*\t(.+?)\s*$/gm)].map((m) => `${m[1]}: ${m[2]!.replace(/\s+/g, ' ')}`);
}

test('guest code: mov ecx, N; out port, al; dec ecx; jnz back to the out; hlt', () => {
  assert.equal(disassemble(exitLoopCode(0x12345678)), [
    '0: mov $0x12345678,%ecx',
    '6: out %al,$0x80',
    '8: dec %ecx',
    'a: jne 0x6',
    'c: hlt',
  ]);
  assert.equal(disassemble(exitLoopCode(1, 0x42))[1], '6: out %al,$0x42');
  assert.is(toHex(exitLoopCode(200_000)), '66b9400d0300e680664975faf4');
});

test('guest code: rejects counts and ports the code cannot express', () => {
  for (const n of [0, -1, 1.5, 2 ** 32, Number.NaN]) assert.throws(() => exitLoopCode(n), RangeError, `n=${n}`);
  assert.throws(() => exitLoopCode(1, 0x100), RangeError);
  assert.ok(GUEST.loadAddr + exitLoopCode(1).length <= GUEST.memBytes);
});

test('options: defaults, values, and usage errors', () => {
  assert.equal(parseExitsArgs([]), { exits: 100_000, forwardedExits: 10_000, runs: 3, out: undefined, localOnly: false, help: false });
  assert.equal(parseExitsArgs(['--exits', '5000', '--runs', '5', '--out', '/tmp/x.json', '--local-only']), {
    exits: 5000, forwardedExits: 500, runs: 5, out: '/tmp/x.json', localOnly: true, help: false,
  });
  assert.is(parseExitsArgs(['--exits', '3']).forwardedExits, 1);
  assert.is(parseExitsArgs(['--exits', '3', '--forwarded-exits', '7']).forwardedExits, 7);
  assert.is(parseExitsArgs(['-h']).help, true);
  for (const bad of [['--exits', '0'], ['--exits', 'many'], ['--exits', '4294967296'], ['--runs', '1.5'], ['--forwarded-exits', '0'], ['--fast'], ['extra'], ['--exits']]) {
    assert.throws(() => parseExitsArgs(bad), (e: unknown) => e instanceof UsageError, bad.join(' '));
  }
});

test('median (lib.mjs stats, used for the summary): odd and even counts, input left unsorted', () => {
  const xs = [5, 1, 3];
  assert.is(stats(xs).median, 3);
  assert.equal(xs, [5, 1, 3]);
  assert.is(stats([4, 1, 3, 2]).median, 2.5);
  assert.is(stats([]).median, null);
});

test('C twin: builds, and rejects bad arguments with status 2 before touching KVM', () => {
  const bin = twinBinary(projectRoot());
  const code = toHex(exitLoopCode(10));
  const cases: [string[], RegExp][] = [
    [[], /expected 3 arguments/],
    [['65536', '0x1000', 'abc'], /HEX_CODE/],
    [['65536', '0x1000', 'zz'], /HEX_CODE/],
    [['65536', '0xfffa', code], /does not fit/],
    [['65537', '0x1000', code], /multiple of 4096/],
    [['64k', '0x1000', code], /MEM_BYTES is not a number/],
  ];
  for (const [args, message] of cases) {
    const r = spawnSync(bin, args, { encoding: 'utf8' });
    assert.is(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, message);
    assert.is(r.stdout, '');
  }
});

test.after(() => rmSync(dir, { recursive: true, force: true }));
test.run();
