import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync } from 'node:fs';
import { ElfError, loadElf } from '../../../bpf/elf';
import { decode } from '../../../bpf/insn';
import { packageFromElf, parsePackage, serializePackage } from '../../../bpf/package';
import { needs } from '../../needs';
import { CLANG, NO_CLANG, compileBpf, run, tmp } from './util';

const isElfError = (re: RegExp) => (e: unknown): boolean => e instanceof ElfError && re.test((e as Error).message);

const BTF_AND_LEGACY = `
typedef unsigned long long u64; typedef unsigned int u32;
#define SEC(x) __attribute__((section(x), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
struct val { u64 a; u32 b[3]; };
struct { __uint(type, 1); __uint(max_entries, 1024); __type(key, u32); __type(value, struct val); __uint(map_flags, 1); } table SEC(".maps");
struct { __uint(type, 27); __uint(max_entries, 1 << 16); } events SEC(".maps");
struct { __uint(type, 2); __uint(key_size, 4); __uint(value_size, 8); __uint(max_entries, 4); } sized SEC(".maps");
struct bpf_map_def { u32 type, key_size, value_size, max_entries, map_flags; };
struct bpf_map_def SEC("maps") old = { 5, 8, 16, 32, 0 };
static void *(*map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*ringbuf_output)(void *m, void *d, u64 s, u64 f) = (void *)130;
static __attribute__((noinline)) u64 helper(void *m, u32 k) { u64 *v = map_lookup_elem(m, &k); return v ? *v : 0; }
SEC("tracepoint/sched/sched_switch") int on_switch(void *ctx) {
  u32 k = 1; struct val *v = map_lookup_elem(&table, &k);
  if (v) ringbuf_output(&events, v, sizeof *v, 0);
  return helper(&sized, 2) + helper(&old, 3);
}
SEC("kprobe/do_nanosleep") int on_sleep(void *ctx) { u32 k = 0; return map_lookup_elem(&old, &k) != 0; }
SEC("raw_tracepoint/sched_wakeup") int on_wake(void *ctx) { return 0; }
SEC("fentry/do_unlinkat") int on_unlink(void *ctx) { return 0; }
char LICENSE[] SEC("license") = "Dual BSD/GPL";
`;

needs(NO_CLANG)('loads BTF-defined and legacy maps, programs, attach points, license', () => {
  const o = loadElf(compileBpf('maps', BTF_AND_LEGACY));
  assert.is(o.license, 'Dual BSD/GPL');
  const byName = Object.fromEntries(o.maps.map((m) => [m.name, m]));
  assert.equal(byName.table, { name: 'table', type: 1, keySize: 4, valueSize: 24, maxEntries: 1024, flags: 1, source: 'btf' });
  assert.equal(byName.events, { name: 'events', type: 27, keySize: 0, valueSize: 0, maxEntries: 65536, flags: 0, source: 'btf' });
  assert.equal(byName.sized, { name: 'sized', type: 2, keySize: 4, valueSize: 8, maxEntries: 4, flags: 0, source: 'btf' });
  assert.equal(byName.old, { name: 'old', type: 5, keySize: 8, valueSize: 16, maxEntries: 32, flags: 0, source: 'legacy' });
  const progs = Object.fromEntries(o.programs.map((p) => [p.name, p]));
  assert.equal(progs.on_switch!.attach, { kind: 'tracepoint', target: 'sched/sched_switch' });
  assert.equal(progs.on_sleep!.attach, { kind: 'kprobe', target: 'do_nanosleep' });
  assert.equal(progs.on_wake!.attach, { kind: 'raw_tracepoint', target: 'sched_wakeup' });
  assert.equal(progs.on_unlink!.attach, { kind: 'fentry', target: 'do_unlinkat' });
  assert.ok(o.symbols.some((s) => s.name === 'on_switch'));
});

needs(NO_CLANG)('relocations become map references on LD_IMM64 slots; calls into .text are linked', () => {
  const o = loadElf(compileBpf('maps2', BTF_AND_LEGACY));
  const p = o.programs.find((x) => x.name === 'on_switch')!;
  const insns = decode(p.insns);
  const at = new Map(insns.map((l) => [l.slot, l.insn]));
  assert.equal(p.mapRefs.map((r) => r.map).sort(), ['events', 'old', 'sized', 'table']);
  for (const r of p.mapRefs) {
    const i = at.get(r.slot);
    assert.ok(i?.kind === 'ldimm64' && i.src === 1 && i.imm === 0n, `slot ${r.slot} is a map-fd LD_IMM64`);
  }
  // Every bpf-to-bpf call lands on the first instruction of the appended helper.
  const ownEnd = o.symbols.find((s) => s.name === 'on_switch')!.size / 8;
  const calls = insns.filter((l) => l.insn.kind === 'call' && l.insn.src === 1);
  assert.is(calls.length, 2);
  for (const c of calls) if (c.insn.kind === 'call') assert.is(c.slot + 1 + c.insn.imm, ownEnd);
  const pkg = packageFromElf(o, { name: 'demo', hintMap: 'events' });
  assert.is(pkg.hintMap, pkg.maps.findIndex((m) => m.name === 'events'));
  assert.equal(parsePackage(serializePackage(pkg)).pkg, pkg);
});

needs(NO_CLANG)('global variables and unsupported sections are refused clearly', () => {
  const globals = compileBpf('glob', `int counter; __attribute__((section("kprobe/x"), used)) int f(void *c) { return ++counter; }
char L[] __attribute__((section("license"), used)) = "GPL";`);
  assert.throws(() => loadElf(globals), isElfError(/only maps are supported/));
  const odd = loadElf(compileBpf('odd', `__attribute__((section("xdp"), used)) int f(void *c) { return 2; }
char L[] __attribute__((section("license"), used)) = "GPL";`));
  assert.is(odd.programs[0]!.attach, null);
  assert.throws(() => packageFromElf(odd, { name: 'odd' }), /unsupported section prefix/);
});

test('non-ELF files and truncated headers get clear errors', () => {
  assert.throws(() => loadElf(new Uint8Array(Buffer.from('#!/bin/sh\necho hi\n'))), isElfError(/not an ELF file/));
  assert.throws(() => loadElf(new Uint8Array([0x7f, 0x45, 0x4c, 0x46, 2, 1])), isElfError(/truncated ELF/));
});

needs(NO_CLANG)('an x86 object and truncated BPF objects get clear errors', () => {
  run(CLANG!, ['-c', '-x', 'c', '-o', tmp('x86.o'), '-'], 'int f(void) { return 1; }\n');
  assert.throws(() => loadElf(new Uint8Array(readFileSync(tmp('x86.o')))), isElfError(/machine 62 is not BPF/));
  const good = compileBpf('trunc', BTF_AND_LEGACY);
  for (const n of [40, 64, 1000, good.length - 1]) {
    assert.throws(() => loadElf(good.subarray(0, n)), isElfError(/truncated/), `cut at ${n}`);
  }
});

test.run();
