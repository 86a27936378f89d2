import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import {
  type Package, PackageError, packageDigest, packageFromJson, packageToJson, parsePackage, serializePackage, validatePackage,
} from '../../../bpf/package';
import { affinityPackage } from '../../../bpf/programs/affinity';

const isPkgError = (re: RegExp) => (e: unknown): boolean => e instanceof PackageError && re.test((e as Error).message);
const clone = (p: Package): Package => structuredClone(p);

test('serialise → parse is the identity, and the layout is the documented one', () => {
  const p = affinityPackage();
  const b = serializePackage(p);
  const { pkg, digest } = parsePackage(b);
  assert.equal(pkg, p);
  const dv = new DataView(b.buffer);
  assert.is(Buffer.from(b.subarray(0, 8)).toString(), 'TSVMMBPF');
  assert.is(dv.getUint16(8, true), 1);
  assert.is(dv.getUint16(10, true), 128);
  assert.is(dv.getUint32(12, true), b.length);
  assert.is(dv.getUint16(16, true), 3);
  assert.is(dv.getUint16(18, true), 4);
  assert.is(dv.getUint32(20, true), 0);
  // First program record right after 3 map records; its insns start after the padded attach string.
  const prog = 128 + 3 * 64;
  assert.is(Buffer.from(b.subarray(prog, prog + 14)).toString(), 'affinity_enter');
  assert.is(dv.getUint32(prog + 32, true), 5); // BPF_PROG_TYPE_TRACEPOINT
  assert.is(dv.getUint32(prog + 36, true), 3); // tracepoint
  const alen = dv.getUint32(prog + 40, true);
  assert.is(Buffer.from(b.subarray(prog + 64, prog + 64 + alen)).toString(), 'syscalls/sys_enter_sched_setaffinity');
  const insnsAt = prog + 64 + ((alen + 1 + 7) & ~7);
  assert.is(Buffer.from(b.subarray(insnsAt, insnsAt + p.programs[0]!.insns.length)).toString('hex'), Buffer.from(p.programs[0]!.insns).toString('hex'));
  assert.is(digest, createHash('sha256').update(b.subarray(0, b.length - 32)).digest('hex'));
});

test('digest is stable and changes with any content change', () => {
  const d = packageDigest(affinityPackage());
  assert.is(packageDigest(affinityPackage()), d);
  assert.match(d, /^[0-9a-f]{64}$/);
  const p = affinityPackage();
  p.maps[1]!.maxEntries = 2048;
  assert.is.not(packageDigest(p), d);
  const q = affinityPackage();
  q.programs[2]!.insns = q.programs[2]!.insns.slice();
  q.programs[2]!.insns[0] ^= 0x01;
  assert.is.not(packageDigest(q), d);
});

test('every truncation is rejected', () => {
  const b = serializePackage(affinityPackage());
  for (let n = 0; n < b.length; n++) {
    assert.throws(() => parsePackage(b.subarray(0, n)), (e: unknown) => e instanceof PackageError, `truncated to ${n}`);
  }
  assert.throws(() => parsePackage(b.subarray(0, 100)), isPkgError(/truncated/));
  assert.throws(() => parsePackage(b.subarray(0, b.length - 1)), isPkgError(/total_size says \d+ bytes, got \d+ \(truncated\)/));
});

test('corrupting any byte is rejected (digest or a field check)', () => {
  const b = serializePackage(affinityPackage());
  for (let i = 0; i < b.length; i++) {
    const c = b.slice();
    c[i] ^= 0x40;
    assert.throws(() => parsePackage(c), (e: unknown) => e instanceof PackageError, `byte ${i}`);
  }
  const c = b.slice();
  c[b.length - 200] ^= 1;
  assert.throws(() => parsePackage(c), isPkgError(/digest mismatch/));
});

test('field checks name what is wrong, even with a matching digest', () => {
  const resign = (b: Uint8Array): Uint8Array => {
    b.set(createHash('sha256').update(b.subarray(0, b.length - 32)).digest(), b.length - 32);
    return b;
  };
  const base = serializePackage(affinityPackage());
  const dv = (b: Uint8Array): DataView => new DataView(b.buffer);
  let b = base.slice(); b[0] = 0x58;
  assert.throws(() => parsePackage(resign(b)), isPkgError(/bad magic/));
  b = base.slice(); dv(b).setUint16(8, 2, true);
  assert.throws(() => parsePackage(resign(b)), isPkgError(/format version 2/));
  b = base.slice(); dv(b).setUint32(24, 1, true);
  assert.throws(() => parsePackage(resign(b)), isPkgError(/reserved header field must be zero/));
  b = base.slice(); dv(b).setUint32(20, 1, true); // hint map → the hash map
  assert.throws(() => parsePackage(resign(b)), isPkgError(/hint map 'stash' is not a ringbuf/));
  b = base.slice(); dv(b).setUint32(128 + 3 * 64 + 32, 2, true); // prog_type kprobe on a tracepoint
  assert.throws(() => parsePackage(resign(b)), isPkgError(/prog_type 2 does not match attach kind tracepoint/));
  b = base.slice(); dv(b).setUint32(128 + 3 * 64 + 44, 1000, true);
  assert.throws(() => parsePackage(resign(b)), isPkgError(/record_size \d+ but its counts make/));
});

test('validation refuses bad packages before serialising', () => {
  const p = affinityPackage();
  let q = clone(p); q.programs[0]!.relocations[0]!.map = 9;
  assert.throws(() => serializePackage(q), isPkgError(/names map 9, package has 3/));
  q = clone(p); q.programs[0]!.relocations[0]!.insn += 1;
  assert.throws(() => serializePackage(q), isPkgError(/without a relocation|not on the first slot/));
  q = clone(p); q.programs[1]!.relocations.pop();
  assert.throws(() => serializePackage(q), isPkgError(/refers to a map \(src 1\) without a relocation/));
  q = clone(p); q.maps[0]!.maxEntries = 5000;
  assert.throws(() => serializePackage(q), isPkgError(/power of two/));
  q = clone(p); q.programs[1]!.name = 'affinity_enter';
  assert.throws(() => serializePackage(q), isPkgError(/duplicate program name/));
  q = clone(p); q.programs[0]!.attach = { kind: 'tracepoint', target: 'no_slash' };
  assert.throws(() => serializePackage(q), isPkgError(/category\/name/));
  q = clone(p); q.programs[0]!.insns = p.programs[0]!.insns.subarray(0, 10 * 8); // slot 9 is the first half of `r1 = map[stash] ll`
  q.programs[0]!.relocations = [];
  assert.throws(() => validatePackage(q), isPkgError(/cut off by the end of the program/));
  q = clone(p); q.license = '';
  assert.throws(() => serializePackage(q), isPkgError(/license/));
});

test('JSON form round-trips and checks the digest', () => {
  const p = affinityPackage();
  const j = packageToJson(p);
  assert.is(j.digest, packageDigest(p));
  assert.is(j.hintMap, 'hints');
  assert.is(j.programs[0]!.insns[0], 'bf16000000000000');
  const back = packageFromJson(JSON.parse(JSON.stringify(j)));
  assert.equal(back, p);
  j.programs[0]!.insns[0] = 'bf17000000000000';
  assert.throws(() => packageFromJson(j), isPkgError(/digest .* does not match/));
});

test.run();
