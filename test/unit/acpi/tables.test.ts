// ACPI tables as bytes: checksums, the RSDP → XSDT → FADT/MADT → DSDT pointers, the
// FADT's hardware-reduced fields, MADT entries for 1..300 vCPUs, layout and errors.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { AcpiError, buildAcpiTables } from '../../../vmm/acpi/index';
import { SLEEP_CONTROL_S5, sleepControlType, SLEEP_CONTROL_SLP_EN } from '../../../devices/power';
import { checksum } from '../../../vmm/acpi/tables';
import { ascii, BASE, platform, splitImage, sumOf, tsvmmConfig } from './helpers';

const isAcpiError = (e: unknown): boolean => e instanceof AcpiError;
const build = (vcpus = 4, virtio = 3) => {
  const { rsdpAddr, image } = buildAcpiTables(tsvmmConfig(vcpus, virtio), BASE);
  return { rsdpAddr, image, t: splitImage(image, BASE, rsdpAddr) };
};
const view = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength);

test('checksum() makes a byte sequence sum to zero', () => {
  const b = Uint8Array.of(1, 2, 3, 0);
  b[3] = checksum(b);
  assert.is(b[3], 0xfa);
  assert.is(sumOf(b), 0);
  assert.is(checksum(new Uint8Array(4)), 0);
});

test('RSDP: revision 2, both checksums, XSDT address, no RSDT', () => {
  const { rsdpAddr, t } = build();
  assert.is(rsdpAddr, BASE); // 16-byte aligned in the BIOS area: found by Linux's scan too
  assert.is(ascii(t.rsdp, 0, 8), 'RSD PTR ');
  assert.is(sumOf(t.rsdp.subarray(0, 20)), 0, 'ACPI 1.0 checksum');
  assert.is(sumOf(t.rsdp), 0, 'extended checksum');
  assert.is(t.rsdp[15], 2);
  assert.is(view(t.rsdp).getUint32(16, true), 0);
  assert.is(view(t.rsdp).getUint32(20, true), 36);
  assert.is(ascii(t.rsdp, 9, 6), 'TSVMM ');
});

test('every table checksums to zero and carries the header it claims', () => {
  const { t } = build();
  for (const [sig, table, rev] of [['XSDT', t.xsdt, 1], ['FACP', t.fadt, 6], ['APIC', t.madt, 5], ['DSDT', t.dsdt, 2]] as const) {
    assert.is(ascii(table, 0, 4), sig);
    assert.is(sumOf(table), 0, `${sig} checksum`);
    assert.is(view(table).getUint32(4, true), table.length);
    assert.is(table[8], rev, `${sig} revision`);
    assert.is(ascii(table, 10, 6), 'TSVMM ');
    assert.is(ascii(table, 16, 8), `TSVM${sig}`);
  }
  assert.is(t.xsdt.length, 36 + 16); // FADT and MADT
});

test('layout: contiguous from base, each table 16-byte aligned, inside 0xe0000-0xfffff', () => {
  const { image, t } = build(8, 8);
  const order = ['RSD PTR ', 'XSDT', 'FACP', 'APIC', 'DSDT'].map((s) => t.addr[s]!);
  assert.is(order[0], BASE);
  for (let i = 0; i < order.length; i++) {
    assert.is(order[i]! % 16, 0);
    if (i > 0) assert.ok(order[i]! > order[i - 1]!, 'tables in order');
    if (i > 0) assert.ok(order[i]! - order[i - 1]! < 16 + 0x10000, 'no gaps beyond alignment');
  }
  assert.is(order[4]! + t.dsdt.length, BASE + image.length, 'image ends with the DSDT');
  assert.ok(BASE + image.length <= 0x100000);
});

test('FADT: hardware-reduced, DSDT pointers, boot arch flags, sleep registers, hypervisor id', () => {
  const { t } = build();
  const dv = view(t.fadt);
  assert.is(t.fadt.length, 276);
  assert.is(dv.getUint32(40, true), t.addr['DSDT']);
  assert.is(Number(dv.getBigUint64(140, true)), t.addr['DSDT']);
  const flags = dv.getUint32(112, true);
  assert.ok(flags & (1 << 20), 'HW_REDUCED_ACPI');
  assert.not.ok(flags & (1 << 10), 'no reset register');
  const boot = dv.getUint16(109, true);
  assert.ok(boot & (1 << 2), 'VGA not present');
  assert.ok(boot & (1 << 5), 'CMOS RTC not present');
  assert.not.ok(boot & (1 << 1), 'no 8042 declared');
  assert.not.ok(boot & (1 << 0), 'no legacy devices');
  assert.is(dv.getUint16(46, true), 0, 'no SCI');
  assert.equal([...t.fadt.subarray(116, 129)], new Array(13).fill(0), 'reset register and value empty');
  // SLEEP_CONTROL_REG / SLEEP_STATUS_REG: SystemIO, 8 bits, byte access, ports 0x600/0x601.
  assert.equal([...t.fadt.subarray(244, 248)], [1, 8, 0, 1]);
  assert.is(dv.getBigUint64(248, true), 0x600n);
  assert.equal([...t.fadt.subarray(256, 260)], [1, 8, 0, 1]);
  assert.is(dv.getBigUint64(260, true), 0x601n);
  assert.is(ascii(t.fadt, 268, 8), 'TSVMM\0\0\0');
  // PM1/GPE/PM timer blocks, 32 and 64-bit, all absent.
  assert.ok(t.fadt.subarray(56, 96).every((b) => b === 0));
  assert.ok(t.fadt.subarray(148, 244).every((b) => b === 0));
});

test('what Linux writes for S5 decodes as SLP_TYP 5 with SLP_EN', () => {
  assert.is(SLEEP_CONTROL_S5, 0x34);
  assert.is(sleepControlType(SLEEP_CONTROL_S5), 5);
  assert.ok(SLEEP_CONTROL_S5 & SLEEP_CONTROL_SLP_EN);
});

interface MadtEntry {
  type: number;
  bytes: Uint8Array;
}
function madtEntries(madt: Uint8Array): MadtEntry[] {
  const out: MadtEntry[] = [];
  for (let o = 44; o < madt.length; ) {
    const len = madt[o + 1]!;
    assert.ok(len >= 2 && o + len <= madt.length, `MADT entry at ${o} fits`);
    out.push({ type: madt[o]!, bytes: madt.subarray(o, o + len) });
    o += len;
  }
  return out;
}

for (const vcpus of [1, 4, 8, 64, 254, 255, 256, 300]) {
  test(`MADT for ${vcpus} vCPUs: enabled local APIC id i for vCPU i (x2APIC past 254), IOAPIC, IRQ0 override`, () => {
    const { t } = build(vcpus);
    const dv = view(t.madt);
    assert.is(dv.getUint32(36, true), 0xfee0_0000);
    assert.is(dv.getUint32(40, true), 1, 'PCAT_COMPAT');
    const e = madtEntries(t.madt);
    const lapics = e.filter((x) => x.type === 0);
    const x2apics = e.filter((x) => x.type === 9);
    assert.is(lapics.length, Math.min(vcpus, 255));
    assert.is(x2apics.length, Math.max(0, vcpus - 255));
    lapics.forEach((x, i) => {
      assert.equal([...x.bytes], [0, 8, i, i, 1, 0, 0, 0], `LAPIC ${i}`);
    });
    x2apics.forEach((x, k) => {
      const v = view(x.bytes);
      assert.is(x.bytes.length, 16);
      assert.is(v.getUint32(4, true), 255 + k, 'x2APIC id');
      assert.is(v.getUint32(8, true), 1, 'enabled');
      assert.is(v.getUint32(12, true), 255 + k, 'UID');
    });
    const ioapics = e.filter((x) => x.type === 1);
    assert.is(ioapics.length, 1);
    assert.equal([...ioapics[0]!.bytes], [1, 12, 0, 0, 0x00, 0x00, 0xc0, 0xfe, 0, 0, 0, 0]);
    const iso = e.filter((x) => x.type === 2);
    assert.equal(iso.map((x) => [...x.bytes]), [[2, 10, 0, 0, 2, 0, 0, 0, 0, 0]]);
    assert.is(e.filter((x) => x.type === 4).length, 1, 'LINT1 NMI');
    assert.is(e.filter((x) => x.type === 0x0a).length, vcpus > 255 ? 1 : 0, 'x2APIC LINT1 NMI');
    assert.is(sumOf(t.madt), 0);
  });
}

test('too large: a clear AcpiError naming the size and the window', () => {
  try {
    buildAcpiTables(tsvmmConfig(9000), BASE);
    assert.unreachable('9000 vCPUs cannot fit in 128 KiB');
  } catch (e) {
    assert.ok(isAcpiError(e), String(e));
    assert.match((e as Error).message, /must end by 0x100000/);
    assert.match((e as Error).message, /9000 vCPUs/);
  }
  // A large base leaves less room: the same tables fit at 0xe0000 but not at 0xff800.
  const { image } = buildAcpiTables(tsvmmConfig(256, 16), BASE);
  assert.ok(image.length > 0x800);
  assert.throws(() => buildAcpiTables(tsvmmConfig(256, 16), 0xff800), isAcpiError);
});

test('invalid config and base are refused with AcpiError', () => {
  const ok = tsvmmConfig(1);
  assert.throws(() => buildAcpiTables(ok, 0xe0008), isAcpiError, 'unaligned base');
  assert.throws(() => buildAcpiTables(ok, 0xd0000), isAcpiError, 'below the window');
  assert.throws(() => buildAcpiTables(ok, 0x100000), isAcpiError, 'above the window');
  assert.throws(() => buildAcpiTables({ ...ok, vcpus: 0 }, BASE), isAcpiError);
  assert.throws(() => buildAcpiTables({ ...ok, vcpus: 1.5 }, BASE), isAcpiError);
  assert.throws(() => buildAcpiTables({ ...ok, serial: { port: 0x3f8, irq: 16 } }, BASE), isAcpiError);
  assert.throws(() => buildAcpiTables({ ...ok, i8042: { dataPort: 0x60, commandPort: 0x64, irq: 16 } }, BASE), isAcpiError);
  assert.throws(() => buildAcpiTables({ ...ok, i8042: { dataPort: 0x60, commandPort: 0x10000, irq: 1 } }, BASE), isAcpiError);
  assert.throws(() => buildAcpiTables({ ...ok, pvpanicPort: 0x10000 }, BASE), isAcpiError);
  assert.throws(() => buildAcpiTables({ ...ok, virtioMmio: [{ base: 0xd0000000, size: 0, gsi: 5 }] }, BASE), isAcpiError);
  assert.throws(() => buildAcpiTables({ ...ok, virtioMmio: new Array(257).fill({ base: 0xd0000000, size: 0x1000, gsi: 5 }) }, BASE), isAcpiError);
  assert.throws(() => buildAcpiTables({ ...ok, hypercall: { ioBase: 0x700, ioLen: 256, memBase: 0xc0000000, memSize: 0x1000 } }, BASE), isAcpiError);
});

test('optional devices are optional: a bare config still builds a valid DSDT', () => {
  const { image, rsdpAddr } = buildAcpiTables({ ...platform, vcpus: 1, virtioMmio: [] }, BASE);
  const t = splitImage(image, BASE, rsdpAddr);
  assert.is(sumOf(t.dsdt), 0);
  const text = ascii(t.dsdt, 36, t.dsdt.length - 36);
  assert.ok(text.includes('_S5_'));
  assert.not.ok(text.includes('COM1'));
  assert.not.ok(text.includes('PS2_'));
  assert.not.ok(text.includes('LNRO0005'));
});

test.run();
