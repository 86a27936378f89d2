import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  type Insn, AluOp, JmpOp, AtomicOp, Size, BpfInsnError, decode, encode, bytesToRaw, fromRaw, patchRaw, rawAt, rawToBytes, toRaw,
} from '../../../bpf/insn';

const aluOps = Object.keys(AluOp) as Array<keyof typeof AluOp>;
const jmpOps = Object.keys(JmpOp) as Array<keyof typeof JmpOp>;
const sizes = Object.keys(Size) as Array<keyof typeof Size>;

/** One of every instruction shape tsvmm can encode. */
function everyInsn(): Insn[] {
  const out: Insn[] = [];
  for (const width of [32, 64] as const) {
    for (const op of aluOps) {
      if (op === 'neg') { out.push({ kind: 'alu', width, op, dst: 3, src: null, imm: 0, off: 0 }); continue; }
      out.push({ kind: 'alu', width, op, dst: 1, src: 2, imm: 0, off: 0 });
      out.push({ kind: 'alu', width, op, dst: 9, src: null, imm: -123456, off: 0 });
    }
    out.push({ kind: 'alu', width, op: 'div', dst: 1, src: 2, imm: 0, off: 1 }); // sdiv
    out.push({ kind: 'alu', width, op: 'mod', dst: 1, src: null, imm: 7, off: 1 }); // smod
    out.push({ kind: 'alu', width, op: 'mov', dst: 1, src: 2, imm: 0, off: 8 }); // movsx
    for (const op of jmpOps) {
      if (op === 'ja') continue;
      out.push({ kind: 'jmp', width, op, dst: 4, src: 5, imm: 0, off: -7 });
      out.push({ kind: 'jmp', width, op, dst: 4, src: null, imm: 0x7fffffff, off: 32767 });
    }
  }
  out.push({ kind: 'jmp', width: 64, op: 'ja', dst: 0, src: null, imm: 0, off: -32768 });
  out.push({ kind: 'jmp', width: 32, op: 'ja', dst: 0, src: null, imm: 100000, off: 0 }); // gotol
  for (const order of ['le', 'be', 'swap'] as const) for (const bits of [16, 32, 64] as const) out.push({ kind: 'end', order, dst: 7, bits });
  out.push({ kind: 'call', src: 0, imm: 130 }, { kind: 'call', src: 1, imm: -5 }, { kind: 'call', src: 2, imm: 4242 }, { kind: 'exit' });
  for (const src of [0, 1, 2, 3, 4, 5, 6]) out.push({ kind: 'ldimm64', dst: 1, src, imm: -0x123456789abcdefn });
  out.push({ kind: 'ldimm64', dst: 2, src: 0, imm: 0x7fff_ffff_ffff_ffffn });
  for (const size of sizes) {
    out.push({ kind: 'ldx', size, signed: false, dst: 0, src: 10, off: -8 });
    if (size !== 'DW') {
      out.push({ kind: 'ldx', size, signed: true, dst: 0, src: 1, off: 8 });
      out.push({ kind: 'ldabs', size, imm: 14 }, { kind: 'ldind', size, src: 6, imm: 2 });
    }
    out.push({ kind: 'st', size, dst: 10, off: -16, imm: -1 });
    out.push({ kind: 'stx', size, dst: 10, src: 3, off: -24 });
  }
  for (const size of ['W', 'DW'] as const) {
    for (const op of Object.keys(AtomicOp) as Array<keyof typeof AtomicOp>) {
      out.push({ kind: 'atomic', size, op, fetch: true, dst: 1, src: 2, off: 4 });
      if (op !== 'xchg' && op !== 'cmpxchg') out.push({ kind: 'atomic', size, op, fetch: false, dst: 1, src: 2, off: 4 });
    }
  }
  return out;
}

test('every instruction class round-trips through bytes', () => {
  const insns = everyInsn();
  const bytes = encode(insns);
  const back = decode(bytes).map((l) => l.insn);
  assert.equal(back, insns);
  assert.ok(insns.length > 150);
});

test('known encodings match the kernel layout', () => {
  const hex = (i: Insn): string => Buffer.from(encode([i])).toString('hex');
  assert.is(hex({ kind: 'alu', width: 64, op: 'mov', dst: 6, src: 1, imm: 0, off: 0 }), 'bf16000000000000');
  assert.is(hex({ kind: 'alu', width: 64, op: 'add', dst: 2, src: null, imm: -4, off: 0 }), '07020000fcffffff');
  assert.is(hex({ kind: 'ldx', size: 'W', signed: false, dst: 1, src: 6, off: 8 }), '6161080000000000');
  assert.is(hex({ kind: 'jmp', width: 32, op: 'jgt', dst: 1, src: null, imm: 3, off: 1 }), '2601010003000000');
  assert.is(hex({ kind: 'atomic', size: 'DW', op: 'cmpxchg', fetch: true, dst: 1, src: 3, off: 0 }), 'db310000f1000000');
  assert.is(hex({ kind: 'end', order: 'be', dst: 3, bits: 16 }), 'dc03000010000000');
  assert.is(hex({ kind: 'ldimm64', dst: 1, src: 0, imm: 0x123456789n }), '1801000089674523' + '0000000001000000');
  assert.is(hex({ kind: 'call', src: 0, imm: 130 }), '8500000082000000');
  assert.is(hex({ kind: 'exit' }), '9500000000000000');
});

test('any bytes decode, and re-encode to the same bytes', () => {
  let seed = 12345;
  const rnd = (): number => (seed = (seed * 1103515245 + 12345) >>> 0) >>> 16;
  const bytes = new Uint8Array(8 * 4000);
  for (let i = 0; i < bytes.length; i++) bytes[i] = rnd() & 0xff;
  // Bias some slots toward real opcodes so canonical decodes are exercised too.
  for (let s = 0; s < 4000; s += 3) { bytes[s * 8 + 1] = bytes[s * 8 + 1]! & 0x77; bytes[s * 8 + 4] = 0; }
  const located = decode(bytes);
  const raws = located.flatMap((l) => toRaw(l.insn));
  assert.equal(Buffer.from(rawToBytes(raws)), Buffer.from(bytes));
  assert.ok(located.some((l) => l.insn.kind === 'raw'));
  assert.ok(located.some((l) => l.insn.kind !== 'raw'));
});

test('non-canonical fields decode as raw instead of being dropped', () => {
  const raw = bytesToRaw(new Uint8Array([0x07, 0x21, 0, 0, 4, 0, 0, 0])); // ALU64 ADD K with a src register
  assert.is(fromRaw(raw, 0).kind, 'raw');
  const cut = bytesToRaw(new Uint8Array([0x18, 0x01, 0, 0, 1, 0, 0, 0])); // LD_IMM64 without its second slot
  assert.is(fromRaw(cut, 0).kind, 'raw');
});

test('invalid fields are rejected with typed errors', () => {
  assert.throws(() => encode([{ kind: 'alu', width: 64, op: 'mov', dst: 11, src: null, imm: 0, off: 0 }]), (e: unknown) => e instanceof BpfInsnError && /r11/.test((e as Error).message));
  assert.throws(() => encode([{ kind: 'jmp', width: 64, op: 'jeq', dst: 1, src: null, imm: 0, off: 40000 }]), (e: unknown) => e instanceof BpfInsnError);
  assert.throws(() => encode([{ kind: 'alu', width: 64, op: 'add', dst: 1, src: null, imm: 2 ** 33, off: 0 }]), (e: unknown) => e instanceof BpfInsnError);
  assert.throws(() => encode([{ kind: 'atomic', size: 'DW', op: 'xchg', fetch: false, dst: 1, src: 2, off: 0 }]), (e: unknown) => e instanceof BpfInsnError);
  assert.throws(() => bytesToRaw(new Uint8Array(7)), /multiple of 8/);
});

test('rawAt / patchRaw: one slot read, only the given fields rewritten, the shared register byte kept', () => {
  const bytes = rawToBytes([{ code: 0x18, dst: 1, src: 0, off: 0, imm: 7 }, { code: 0, dst: 0, src: 0, off: 0, imm: 0 }, { code: 0x85, dst: 0, src: 1, off: 0, imm: -1 }]);
  assert.equal(rawAt(bytes, 2), { code: 0x85, dst: 0, src: 1, off: 0, imm: -1 });
  patchRaw(bytes, 0, { src: 1, imm: 0 });
  assert.equal(rawAt(bytes, 0), { code: 0x18, dst: 1, src: 1, off: 0, imm: 0 });
  assert.is(bytes[1], 0x11, 'dst in the low nibble, src in the high one');
  patchRaw(bytes, 2, { imm: 5 });
  assert.equal(bytesToRaw(bytes)[2], { code: 0x85, dst: 0, src: 1, off: 0, imm: 5 });
  assert.throws(() => rawAt(bytes, 3), (e: unknown) => e instanceof BpfInsnError);
  assert.throws(() => patchRaw(bytes, -1, { imm: 0 }), (e: unknown) => e instanceof BpfInsnError);
});

test.run();
