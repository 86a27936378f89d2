// AML encoder: byte-exact encodings of known values (PkgLength boundaries, integers at each
// width, names, strings, EISA ids, resource descriptors) and the errors for bad input.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  AmlError,
  buffer,
  cid,
  device,
  eisaId,
  eisaIdValue,
  encodePkgLength,
  extendedInterrupt,
  fixedIo,
  hid,
  integer,
  io,
  irq,
  memory32Fixed,
  method,
  name,
  nameSeg,
  nameString,
  pkg,
  qwordMemory,
  resourceTemplate,
  ret,
  scope,
  string,
  withPkgLength,
} from '../../../vmm/acpi/aml';
import { sumOf } from './helpers';

const bytes = (u: Uint8Array): number[] => [...u];
const isAmlError = (e: unknown): boolean => e instanceof AmlError;

test('PkgLength: one byte up to 63, then 2/3/4 bytes at 64 / 4096 / 2^20', () => {
  assert.equal(bytes(encodePkgLength(0)), [0x00]);
  assert.equal(bytes(encodePkgLength(63)), [0x3f]);
  assert.equal(bytes(encodePkgLength(64)), [0x40, 0x04]);
  assert.equal(bytes(encodePkgLength(0x123)), [0x43, 0x12]);
  assert.equal(bytes(encodePkgLength(4095)), [0x4f, 0xff]);
  assert.equal(bytes(encodePkgLength(4096)), [0x80, 0x00, 0x01]);
  assert.equal(bytes(encodePkgLength(0xfffff)), [0x8f, 0xff, 0xff]);
  assert.equal(bytes(encodePkgLength(0x100000)), [0xc0, 0x00, 0x00, 0x01]);
  assert.equal(bytes(encodePkgLength(0xfffffff)), [0xcf, 0xff, 0xff, 0xff]);
  assert.throws(() => encodePkgLength(1 << 28), isAmlError);
  assert.throws(() => encodePkgLength(-1), isAmlError);
});

test('withPkgLength: the encoded length counts its own bytes, across each boundary', () => {
  const decode = (u: Uint8Array): { value: number; size: number } => {
    const follow = u[0]! >> 6;
    if (follow === 0) return { value: u[0]! & 0x3f, size: 1 };
    let v = u[0]! & 0x0f;
    for (let i = 1; i <= follow; i++) v |= u[i]! << (4 + 8 * (i - 1));
    return { value: v, size: follow + 1 };
  };
  const cases: [number, number][] = [
    [0, 1], [62, 1], [63, 2], [4093, 2], [4094, 3], [0xffffc, 3], [0xffffd, 4],
  ];
  for (const [bodyLen, size] of cases) {
    const out = withPkgLength(new Uint8Array(bodyLen));
    const d = decode(out);
    assert.is(d.size, size, `body ${bodyLen}: PkgLength size`);
    assert.is(d.value, bodyLen + size, `body ${bodyLen}: PkgLength value`);
    assert.is(out.length, bodyLen + size);
  }
});

test('integers: Zero, One, then the narrowest of Byte/Word/DWord/QWord', () => {
  assert.equal(bytes(integer(0)), [0x00]);
  assert.equal(bytes(integer(1)), [0x01]);
  assert.equal(bytes(integer(2)), [0x0a, 0x02]);
  assert.equal(bytes(integer(0xff)), [0x0a, 0xff]);
  assert.equal(bytes(integer(0x100)), [0x0b, 0x00, 0x01]);
  assert.equal(bytes(integer(0xffff)), [0x0b, 0xff, 0xff]);
  assert.equal(bytes(integer(0x10000)), [0x0c, 0x00, 0x00, 0x01, 0x00]);
  assert.equal(bytes(integer(0xd000_1000)), [0x0c, 0x00, 0x10, 0x00, 0xd0]);
  assert.equal(bytes(integer(0xffff_ffff)), [0x0c, 0xff, 0xff, 0xff, 0xff]);
  assert.equal(bytes(integer(0x1_0000_0000)), [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
  assert.equal(bytes(integer(0xffff_ffff_ffff_ffffn)), [0x0e, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
  assert.throws(() => integer(-1), isAmlError);
  assert.throws(() => integer(1.5), isAmlError);
  assert.throws(() => integer(2 ** 60), isAmlError); // not a safe integer: must be a bigint
  assert.throws(() => integer(1n << 64n), isAmlError);
});

test('names: segments padded with _, root/parent prefixes, dual and multi name paths', () => {
  assert.equal(bytes(nameSeg('_S5')), [0x5f, 0x53, 0x35, 0x5f]);
  assert.equal(bytes(nameString('_HID')), [...'_HID'].map((c) => c.charCodeAt(0)));
  assert.equal(bytes(nameString('\\_SB')), [0x5c, 0x5f, 0x53, 0x42, 0x5f]);
  assert.equal(bytes(nameString('^^FOO')), [0x5e, 0x5e, 0x46, 0x4f, 0x4f, 0x5f]);
  assert.equal(bytes(nameString('\\_SB.COM1')), [0x5c, 0x2e, ...'_SB_COM1'].map((c) => (typeof c === 'string' ? c.charCodeAt(0) : c)));
  const multi = nameString('\\_SB.PCI0.ISA');
  assert.equal(bytes(multi.subarray(0, 3)), [0x5c, 0x2f, 3]);
  assert.is(multi.length, 3 + 12);
  assert.equal(bytes(nameString('\\')), [0x5c, 0x00]);
  for (const bad of ['1ABC', 'abcd', 'TOOLONG', 'A-B', '\\_SB..X']) assert.throws(() => nameString(bad), isAmlError, bad);
});

test('strings and EISA ids', () => {
  assert.equal(bytes(string('LNRO0005')), [0x0d, ...'LNRO0005'].map((c) => (typeof c === 'string' ? c.charCodeAt(0) : c)).concat([0]));
  assert.throws(() => string('a\0b'), isAmlError);
  assert.throws(() => string('é'), isAmlError);
  assert.is(eisaIdValue('PNP0501'), 0x0105d041); // as in every PC DSDT
  assert.is(eisaIdValue('PNP0A03'), 0x030ad041);
  assert.equal(bytes(eisaId('PNP0501')), [0x0c, 0x41, 0xd0, 0x05, 0x01]);
  assert.throws(() => eisaIdValue('PNP050'), isAmlError);
  // _HID: a 7-char PNP id is an EISA id; ACPI-style 8-char ids stay strings.
  assert.equal(bytes(hid('PNP0501')), [0x08, ...[0x5f, 0x48, 0x49, 0x44], 0x0c, 0x41, 0xd0, 0x05, 0x01]);
  assert.is(hid('LNRO0005')[5], 0x0d);
  assert.equal(bytes(cid('PNP0C02')), [0x08, ...[0x5f, 0x43, 0x49, 0x44], 0x0c, 0x41, 0xd0, 0x0c, 0x02]);
});

test('Name, Package, Buffer, Method, Return, Scope, Device opcodes', () => {
  // Name(\_S5_, Package(){5, Zero})
  assert.equal(
    bytes(name('\\_S5_', pkg([integer(5), integer(0)]))),
    [0x08, 0x5c, 0x5f, 0x53, 0x35, 0x5f, 0x12, 0x05, 0x02, 0x0a, 0x05, 0x00],
  );
  assert.equal(bytes(buffer(Uint8Array.of(1, 2, 3))), [0x11, 0x06, 0x0a, 0x03, 1, 2, 3]);
  // Method(_STA, 0, NotSerialized) { Return(0x0F) }
  assert.equal(bytes(method('_STA', [ret(integer(0x0f))])), [0x14, 0x09, 0x5f, 0x53, 0x54, 0x41, 0x00, 0xa4, 0x0a, 0x0f]);
  assert.is(method('FOO', [], { args: 3, serialized: true })[6], 0x0b);
  assert.throws(() => method('FOO', [], { args: 8 }), isAmlError);
  assert.equal(bytes(scope('\\_SB', [])), [0x10, 0x06, 0x5c, 0x5f, 0x53, 0x42, 0x5f]);
  assert.equal(bytes(device('COM1', [])), [0x5b, 0x82, 0x05, 0x43, 0x4f, 0x4d, 0x31]);
  assert.throws(() => pkg(new Array(256).fill(integer(0))), isAmlError);
  // A Device whose body crosses the 1-byte PkgLength limit gets a 2-byte one.
  const big = device('BIG', [name('DATA', buffer(new Uint8Array(100)))]);
  assert.equal(bytes(big.subarray(0, 4)), [0x5b, 0x82, 0x40 | ((big.length - 2) & 0xf), (big.length - 2) >> 4]);
});

test('resource descriptors: IO, FixedIO, IRQ, Memory32Fixed, QWordMemory, Interrupt', () => {
  assert.equal(bytes(io({ min: 0x3f8, length: 8 })), [0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]);
  assert.equal(bytes(io({ min: 0x100, max: 0x1ff, alignment: 0x10, length: 4, decode16: false })), [0x47, 0x00, 0x00, 0x01, 0xff, 0x01, 0x10, 0x04]);
  assert.throws(() => io({ min: 0x10000, length: 1 }), isAmlError);
  assert.throws(() => io({ min: 0x700, length: 256 }), isAmlError);
  assert.equal(bytes(fixedIo(0x60, 1)), [0x4b, 0x60, 0x00, 0x01]);
  assert.throws(() => fixedIo(0x400, 1), isAmlError);
  assert.equal(bytes(irq([4])), [0x23, 0x10, 0x00, 0x01]);
  assert.equal(bytes(irq([9, 11], { edge: false, activeLow: true, shared: true })), [0x23, 0x00, 0x0a, 0x18]);
  assert.throws(() => irq([16]), isAmlError);
  assert.equal(bytes(memory32Fixed(0xd000_0000, 0x1000)), [0x86, 0x09, 0x00, 0x01, 0, 0, 0, 0xd0, 0, 0x10, 0, 0]);
  assert.is(memory32Fixed(0, 1, false)[3], 0);
  assert.throws(() => memory32Fixed(0xffff_f000, 0x2000), isAmlError);
  const q = qwordMemory(0x1_0000_0000n, 0x1000);
  assert.is(q.length, 46);
  assert.equal(bytes(q.subarray(0, 6)), [0x8a, 0x2b, 0x00, 0x00, 0x0d, 0x01]);
  const qdv = new DataView(q.buffer);
  assert.is(qdv.getBigUint64(14, true), 0x1_0000_0000n);
  assert.is(qdv.getBigUint64(22, true), 0x1_0000_0fffn);
  assert.is(qdv.getBigUint64(38, true), 0x1000n);
  assert.equal(bytes(extendedInterrupt([5])), [0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0, 0, 0]);
  assert.equal(bytes(extendedInterrupt([40, 41], { edge: false, shared: true })), [0x89, 0x0a, 0x00, 0x09, 0x02, 40, 0, 0, 0, 41, 0, 0, 0]);
  assert.throws(() => extendedInterrupt([]), isAmlError);
});

test('ResourceTemplate: a Buffer whose descriptors and End Tag sum to zero', () => {
  const rt = resourceTemplate([io({ min: 0x505, length: 1 }), extendedInterrupt([7])]);
  // 0x11 PkgLength BufferSize(ByteConst) descriptors... 0x79 checksum
  assert.is(rt[0], 0x11);
  const size = rt[3]!;
  assert.is(rt[2], 0x0a);
  const body = rt.subarray(4);
  assert.is(body.length, size);
  assert.is(body[body.length - 2], 0x79);
  assert.is(sumOf(body), 0);
  assert.is.not(body[body.length - 1], 0);
});

test.run();
