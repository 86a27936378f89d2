// The e820 map and the zero page (vmm/boot/zero-page.ts), decoded back from bytes with the
// offsets of arch/x86/include/uapi/asm/bootparam.h written out here.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { type E820Range, buildZeroPage, e820Map } from '../../../vmm/boot/zero-page';
import { ramLayout } from '../../../vmm/memory';

const MiB = 0x10_0000;
const GiB = 0x4000_0000;
const RAM = 1;
const RESERVED = 2;

/** True if any e820 entry overlaps [start, end). */
const covers = (map: E820Range[], start: number, end: number) => map.some((e) => e.addr < end && e.addr + e.size > start);

test('e820 for 256 MiB: RAM to 0x9fc00, reserved to 1 MiB, RAM to 256 MiB', () => {
  assert.equal(e820Map(ramLayout(256 * MiB)), [
    { addr: 0, size: 0x9fc00, type: RAM },
    { addr: 0x9fc00, size: MiB - 0x9fc00, type: RESERVED },
    { addr: MiB, size: 255 * MiB, type: RAM },
  ]);
});

test('e820 for 4 GiB: low RAM stops at 3 GiB, the last GiB sits above 4 GiB', () => {
  const map = e820Map(ramLayout(4 * GiB));
  assert.equal(map, [
    { addr: 0, size: 0x9fc00, type: RAM },
    { addr: 0x9fc00, size: MiB - 0x9fc00, type: RESERVED },
    { addr: MiB, size: 3 * GiB - MiB, type: RAM },
    { addr: 4 * GiB, size: GiB, type: RAM },
  ]);
  const ramBytes = map.filter((e) => e.type === RAM).reduce((n, e) => n + e.size, 0);
  assert.is(ramBytes + MiB - 0x9fc00, 4 * GiB, 'all memory is accounted for');
});

test('e820 never covers the 3-4 GiB MMIO hole', () => {
  for (const size of [128 * MiB, 3 * GiB - 4096, 3 * GiB, 3 * GiB + 4096, 4 * GiB, 8 * GiB]) {
    const map = e820Map(ramLayout(size));
    assert.not.ok(covers(map, 3 * GiB, 4 * GiB), `memory ${size}`);
    for (let i = 1; i < map.length; i++) assert.ok(map[i]!.addr >= map[i - 1]!.addr + map[i - 1]!.size, 'sorted, no overlap');
  }
});

test('e820Map refuses a second range below 4 GiB', () => {
  assert.throws(() => e820Map([{ gpa: 0, size: GiB }, { gpa: 2 * GiB, size: GiB }]), /4 GiB/);
});

/** The fields the kernel reads, from the bytes. */
function decode(zp: Uint8Array) {
  const dv = new DataView(zp.buffer, zp.byteOffset, zp.byteLength);
  const n = zp[0x1e8]!;
  const e820 = Array.from({ length: n }, (_, i) => {
    const o = 0x2d0 + i * 20;
    return { addr: Number(dv.getBigUint64(o, true)), size: Number(dv.getBigUint64(o + 8, true)), type: dv.getUint32(o + 16, true) };
  });
  return {
    bootFlag: dv.getUint16(0x1fe, true),
    header: dv.getUint32(0x202, true),
    version: dv.getUint16(0x206, true),
    typeOfLoader: zp[0x210]!,
    loadflags: zp[0x211]!,
    ramdiskImage: dv.getUint32(0x218, true),
    ramdiskSize: dv.getUint32(0x21c, true),
    cmdLinePtr: dv.getUint32(0x228, true),
    cmdlineSize: dv.getUint32(0x238, true),
    rsdp: dv.getBigUint64(0x70, true),
    e820,
  };
}

test('buildZeroPage from a bzImage header: loader, loadflags, cmdline, initrd, RSDP, e820', () => {
  // A header excerpt from 0x1f1: setup_sects 4, HdrS, version 2.15, loadflags 0x01, jump 0x66.
  const header = new Uint8Array(0x202 + 0x66 - 0x1f1);
  const h = new DataView(header.buffer);
  header[0] = 4;
  h.setUint16(0x1fe - 0x1f1, 0xaa55, true);
  header[0x201 - 0x1f1] = 0x66;
  h.setUint32(0x202 - 0x1f1, 0x53726448, true);
  h.setUint16(0x206 - 0x1f1, 0x020f, true);
  header[0x211 - 0x1f1] = 0x01 | 0x20; // LOADED_HIGH | QUIET_FLAG: kept
  const e820 = e820Map(ramLayout(512 * MiB));
  const zp = buildZeroPage({
    header, cmdlineAddr: 0x20000, cmdlineSize: 42, initrd: { addr: 0x1f000000, size: 0x123456 }, rsdpAddr: 0xe0000, e820,
  });
  assert.is(zp.length, 4096);
  const d = decode(zp);
  assert.is(zp[0x1f1], 4, 'setup header copied at its own offset');
  assert.is(d.bootFlag, 0xaa55);
  assert.is(d.header, 0x53726448);
  assert.is(d.version, 0x020f);
  assert.is(d.typeOfLoader, 0xff);
  assert.is(d.loadflags & 0x01, 0x01, 'LOADED_HIGH');
  assert.is(d.loadflags & 0x80, 0x80, 'CAN_USE_HEAP');
  assert.is(d.loadflags & 0x20, 0x20, "the image's own flags survive");
  assert.is(d.cmdLinePtr, 0x20000);
  assert.is(d.cmdlineSize, 42);
  assert.is(d.ramdiskImage, 0x1f000000);
  assert.is(d.ramdiskSize, 0x123456);
  assert.is(d.rsdp, 0xe0000n);
  assert.equal(d.e820, e820);
});

test('buildZeroPage for an ELF kernel: a minimal header, no initrd, no RSDP', () => {
  const e820 = e820Map(ramLayout(6 * GiB));
  const d = decode(buildZeroPage({ cmdlineAddr: 0x20000, cmdlineSize: 0, e820 }));
  assert.is(d.bootFlag, 0xaa55);
  assert.is(d.header, 0x53726448);
  assert.is(d.typeOfLoader, 0xff);
  assert.is(d.ramdiskImage, 0);
  assert.is(d.ramdiskSize, 0);
  assert.is(d.rsdp, 0n);
  assert.equal(d.e820, e820);
  assert.is(d.e820[3]!.addr, 4 * GiB);
  assert.is(d.e820[3]!.size, 3 * GiB);
});

test('buildZeroPage refuses more than 128 e820 entries', () => {
  const e820 = Array.from({ length: 129 }, (_, i) => ({ addr: i * MiB, size: MiB, type: RAM }));
  assert.throws(() => buildZeroPage({ cmdlineAddr: 0x20000, cmdlineSize: 0, e820 }), /e820/);
});

test.run();
