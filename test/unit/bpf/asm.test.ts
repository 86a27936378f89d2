import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Asm, AsmError, assembleText, fp, r0, r1, r2, r3, r6, w1, w2 } from '../../../bpf/asm';
import { disassemble, formatInsn } from '../../../bpf/disasm';
import { decode } from '../../../bpf/insn';
import { loadElf } from '../../../bpf/elf';
import { firstMissing, needs } from '../../needs';
import { FIXTURES, LLVM_MC, NO_CLANG, NO_LLVM_MC, NO_OBJDUMP, compileBpf, objdump, run, tmp } from './util';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
/** Bytes of `section` in an ELF object, as written (no relocations applied). */
function sectionBytes(obj: Uint8Array, section: string): Uint8Array {
  const s = loadElf(obj).sections.find((x) => x.name === section);
  if (!s) throw new Error(`no section ${section}`);
  return obj.slice(s.offset, s.offset + s.size);
}

test('builder: forward and backward labels, relocations, named helpers', () => {
  const a = new Asm()
    .label('top')
    .mov(r6, r1)
    .jeq(r1, 0, 'out')
    .ldMap(r1, 'events')
    .jne(w1, w2, 'top')
    .call('ringbuf_output')
    .callLocal('sub')
    .label('out')
    .mov(r0, 0)
    .exit()
    .label('sub')
    .exit()
    .assemble();
  const text = a.insns.map((i, n) => formatInsn(i, n));
  assert.is(text[1], 'if r1 == 0 goto +5'); // over ldMap (2 slots), jne, call, callLocal → slot 7
  assert.is(text[3], 'if w1 != w2 goto -5');
  assert.is(text[4], 'call 130');
  assert.is(text[5], 'call pc+2'); // slot 6 → 'sub' at slot 9
  assert.equal(a.relocations, [{ slot: 2, map: 'events', kind: 1 }]);
  assert.is(a.labels.get('out'), 7);
});

test('builder: errors for unknown labels, far jumps, unknown helpers, mixed widths', () => {
  assert.throws(() => new Asm().goto('nowhere').exit().assemble(), (e: unknown) => e instanceof AsmError && /unknown label 'nowhere'/.test((e as Error).message));
  const far = new Asm().goto('end');
  for (let i = 0; i < 40000; i++) far.mov(r0, 0);
  far.label('end').exit();
  assert.throws(() => far.assemble(), /outside the s16 offset range/);
  assert.throws(() => new Asm().call('no_such_helper' as 'ringbuf_output'), /unknown eBPF helper 'no_such_helper'/);
  assert.throws(() => new Asm().add(w1, r2), /mixing w1 and r2/);
  assert.throws(() => new Asm().label('a').label('a'), /defined twice/);
  assert.throws(() => assembleText('r0 = 0\nr0 ?= 1\nexit'), /line 2: cannot parse/);
});

test('text assembler: disassembly assembles back to the same bytes', () => {
  const a = new Asm().mov(r6, r1).store('u64', fp, -8, 0).store('u32', fp, -12, r1).ld64(r2, -2n)
    .atomic('add', 'u32', r1, 4, r2, true).atomic('cmpxchg', 'u64', r1, 0, r3).endian('swap', r1, 32)
    .ldMap(r1, 'm').jsge(r1, -3, 'x').label('x').exit().assemble();
  const lines = disassemble(a.bytes, { maps: new Map([[a.relocations[0]!.slot, 'm']]) }).map((l) => l.split('\t')[1]!);
  const back = assembleText(lines.join('\n'));
  assert.is(hex(back.bytes), hex(a.bytes));
  assert.equal(back.relocations, a.relocations);
});

needs(NO_LLVM_MC)('the same program assembled by llvm-mc and by tsvmm gives the same bytes', () => {
  const src = join(FIXTURES, 'sample.s');
  run(LLVM_MC!, ['-triple', 'bpfel', '-mcpu=v3', '-filetype=obj', src, '-o', tmp('sample.o')]);
  const llvm = sectionBytes(new Uint8Array(readFileSync(tmp('sample.o'))), '.text');
  const ours = assembleText(readFileSync(src, 'utf8').split('\n').filter((l) => !/^\s*\./.test(l) && !/^sample:/.test(l)).join('\n'));
  assert.ok(llvm.length > 400);
  assert.is(hex(ours.bytes), hex(llvm));
});

needs(NO_LLVM_MC)('builder output equals llvm-mc output for the same instructions', () => {
  const s = `r6 = r1\nr2 = r10\nr2 += -4\nr1 = 0 ll\ncall 1\nif r0 == 0 goto L\nr1 = *(u32 *)(r0 + 4)\nw1 = w1\nlock *(u64 *)(r0 + 8) += r1\nL:\nr0 = 0\nexit\n`;
  writeFileSync(tmp('b.s'), s);
  run(LLVM_MC!, ['-triple', 'bpfel', '-filetype=obj', tmp('b.s'), '-o', tmp('b.o')]);
  const a = new Asm().mov(r6, r1).mov(r2, fp).add(r2, -4).ld64(r1, 0).call('map_lookup_elem').jeq(r0, 0, 'L')
    .load('u32', r1, r0, 4).mov(w1, w1).atomic('add', 'u64', r0, 8, r1).label('L').mov(r0, 0).exit().assemble();
  assert.is(hex(a.bytes), hex(sectionBytes(new Uint8Array(readFileSync(tmp('b.o'))), '.text')));
});

const C_PROGRAM = `
typedef unsigned long long u64; typedef unsigned int u32; typedef unsigned short u16; typedef unsigned char u8;
#define SEC(x) __attribute__((section(x), used))
struct { int (*type)[2]; int (*max_entries)[16]; u32 *key; u64 *value; } arr SEC(".maps");
static void *(*map_lookup_elem)(void *map, const void *key) = (void *)1;
static __attribute__((noinline)) u64 sub(u64 a, u64 b) { return a % b + (a & 0xffff); }
SEC("tracepoint/syscalls/sys_enter_x") int prog(void *ctx) {
  u32 k = *(u32 *)(ctx + 8); u64 *v = map_lookup_elem(&arr, &k);
  if (!v) return 0;
  __sync_fetch_and_add(v, 1); __sync_fetch_and_or(v, 2); __sync_fetch_and_xor(v, k); __sync_fetch_and_and(v, k);
  u64 o = __sync_fetch_and_add(v, 5); u64 p = __sync_lock_test_and_set(v, o); u64 q = __sync_val_compare_and_swap(v, p, 7);
  u32 w = (u32)q * 3 >> 2; u16 x = __builtin_bswap16((u16)w); u64 y = __builtin_bswap64(q);
  long s = (long)y >> 3; s = (u64)s / o; if (s < -5) s = (u64)s % 7;
  u8 b = *(u8 *)(ctx + 1); u16 h = *(u16 *)(ctx + 2); u32 *p32 = (u32 *)(ctx + 40);
  if (b & h) s += sub(s, h);
  __sync_fetch_and_add(p32, 3); u32 o32 = __sync_fetch_and_or(p32, 3);
  return s > 0x12345678abcdLL ? o32 : w + x + b;
}
char LICENSE[] SEC("license") = "GPL";
`;

needs(firstMissing(NO_CLANG, NO_OBJDUMP))("tsvmm's disassembly agrees with llvm-objdump on clang output", () => {
  const obj = compileBpf('dis', C_PROGRAM);
  let compared = 0;
  for (const section of ['tracepoint/syscalls/sys_enter_x', '.text']) {
    const want = objdump(tmp('dis.o'), section);
    const got = new Map(decode(sectionBytes(obj, section)).map((l) => [l.slot, formatInsn(l.insn, l.slot)]));
    assert.ok(want.length > 5, `objdump printed ${section}`);
    for (const { slot, text } of want) {
      const norm = (s: string): string => s.replace(/\s*<[^<>]*>$/, '').replace(/\s+/g, ' ').trim();
      if (text === '<unknown>') continue; // LLVM 14 cannot print 32-bit fetch atomics; ours can
      const ours = norm(got.get(slot) ?? '(none)').replace(/^call pc\+?(-?\d+)/, 'call $1'); // LLVM 14 prints bpf-to-bpf calls as `call <imm>`
      assert.is(ours, norm(text), `${section} slot ${slot}`);
      compared++;
    }
  }
  assert.ok(compared > 50, `compared ${compared} instructions`);
});

needs(NO_CLANG)('clang output disassembles and reassembles to the same bytes', () => {
  const obj = compileBpf('dis2', C_PROGRAM);
  const bytes = sectionBytes(obj, 'tracepoint/syscalls/sys_enter_x');
  const text = disassemble(bytes).map((l) => l.split('\t')[1]!).join('\n');
  assert.is(hex(assembleText(text).bytes), hex(bytes));
});

test.run();
