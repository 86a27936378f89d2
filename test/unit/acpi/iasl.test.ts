// The tables as ACPICA sees them: every table goes through `iasl -d` (Debian acpica-tools,
// the same parser Linux uses) without an error, warning or bad checksum, and the
// disassembly says what we meant; acpiexec loads FADT+MADT+DSDT, evaluates the devices'
// _CRS with ACPICA's resource manager, and runs the hardware-reduced S5 path.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { buffer, device, encodePkgLength, name } from '../../../vmm/acpi/aml';
import { buildAcpiTables } from '../../../vmm/acpi/index';
import { dsdt as dsdtTable } from '../../../vmm/acpi/tables';
import { acpiexec, BASE, compileDataTable, disassemble, fieldValues, splitImage, tsvmmConfig } from './helpers';

const hex = (v: number, digits: number): string => `0x${v.toString(16).toUpperCase().padStart(digits, '0')}`;
const cfg = tsvmmConfig(4, 3);
const built = buildAcpiTables(cfg, BASE);
const t = splitImage(built.image, BASE, built.rsdpAddr);

/** The text of `Device (NAME) { … }` in a disassembly, up to the next Device or the end. */
function deviceBlock(dsl: string, dev: string): string {
  const start = dsl.indexOf(`Device (${dev})`);
  assert.ok(start >= 0, `Device (${dev}) in the disassembly`);
  const next = dsl.indexOf('Device (', start + 1);
  return dsl.slice(start, next < 0 ? undefined : next);
}

test('the check itself fails on a corrupted table', () => {
  const bad = t.fadt.slice();
  bad[9] ^= 0xff;
  assert.throws(() => disassemble(bad), /Incorrect checksum/);
});

test('DSDT: iasl disassembles it cleanly, with every device and \\_S5_', () => {
  const { dsl, log } = disassemble(t.dsdt);
  assert.match(log, /Parsing completed/);
  assert.match(dsl, /DefinitionBlock \("", "DSDT", 2, "TSVMM ", "TSVMDSDT", 0x00000001\)/);
  assert.match(dsl, /Scope \(\\_SB\)/);

  const com1 = deviceBlock(dsl, 'COM1');
  assert.match(com1, /Name \(_HID, EisaId \("PNP0501"\)/);
  assert.match(com1, /IO \(Decode16,\s+0x03F8,\s+\/\/ Range Minimum\s+0x03F8,\s+\/\/ Range Maximum\s+0x01,\s+\/\/ Alignment\s+0x08,/);
  assert.match(com1, /IRQ \(Edge, ActiveHigh, Exclusive, \)\s+\{4\}/);

  // What Linux's i8042_pnp_kbd_probe takes: a keyboard PNP id, two one-port I/O ranges
  // (data, then command) and the keyboard IRQ. (ACPICA prints the name PS2_ as PS2.)
  const kbd = deviceBlock(dsl, 'PS2');
  assert.match(kbd, /Name \(_HID, EisaId \("PNP0303"\)/);
  assert.match(kbd, /IO \(Decode16,\s+0x0060,\s+\/\/ Range Minimum\s+0x0060,\s+\/\/ Range Maximum\s+0x01,\s+\/\/ Alignment\s+0x01,\s+\/\/ Length\s+\)\s+IO \(Decode16,\s+0x0064,\s+\/\/ Range Minimum\s+0x0064,\s+\/\/ Range Maximum\s+0x01,\s+\/\/ Alignment\s+0x01,\s+\/\/ Length/);
  assert.match(kbd, /IRQ \(Edge, ActiveHigh, Exclusive, \)\s+\{1\}/);
  assert.match(kbd, /Method \(_STA, 0, NotSerialized\)[^]*Return \(0x0F\)/);

  const pv = deviceBlock(dsl, 'PEVT');
  assert.match(pv, /Name \(_HID, "QEMU0001"\)/);
  assert.match(pv, /IO \(Decode16,\s+0x0505,\s+\/\/ Range Minimum\s+0x0505,[^]*0x01,\s+\/\/ Length/);

  cfg.virtioMmio.forEach((d, i) => {
    const v = deviceBlock(dsl, `VR0${i}`);
    assert.match(v, /Name \(_HID, "LNRO0005"\)/);
    assert.match(v, new RegExp(`Name \\(_UID, ${i === 0 ? 'Zero' : i === 1 ? 'One' : hex(i, 2)}\\)`));
    assert.match(v, new RegExp(`Memory32Fixed \\(ReadWrite,\\s+${hex(d.base, 8)},\\s+// Address Base\\s+${hex(d.size, 8)},\\s+// Address Length`));
    assert.match(v, new RegExp(`Interrupt \\(ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, \\)\\s+\\{\\s+${hex(d.gsi, 8)},`));
  });

  const hc = deviceBlock(dsl, 'HYPC');
  assert.match(hc, /Name \(_HID, "TSVM0001"\)/);
  assert.match(hc, /IO \(Decode16,\s+0x0700,\s+\/\/ Range Minimum\s+0x0700,[^]*0x40,\s+\/\/ Length/);
  assert.match(hc, /Memory32Fixed \(ReadWrite,\s+0xC0000000,\s+\/\/ Address Base\s+0x00100000,/);
  assert.match(hc, /Method \(_STA, 0, NotSerialized\)[^]*Return \(0x0F\)/);

  assert.match(dsl, /Name \(\\_S5, Package \(0x02\)[^]*\{\s+0x05,\s+Zero\s+\}/);
});

test('DSDT: ranges above 4 GiB become QWordMemory, which iasl decodes', () => {
  const high = { ...cfg, virtioMmio: [{ base: 0x1_0000_0000, size: 0x1000, gsi: 9 }] };
  const { image, rsdpAddr } = buildAcpiTables(high, BASE);
  const { dsl } = disassemble(splitImage(image, BASE, rsdpAddr).dsdt);
  assert.match(
    deviceBlock(dsl, 'VR00'),
    /QWordMemory \(ResourceConsumer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite,\s+0x0000000000000000,\s+\/\/ Granularity\s+0x0000000100000000,\s+\/\/ Range Minimum\s+0x0000000100000FFF,\s+\/\/ Range Maximum\s+0x0000000000000000,\s+\/\/ Translation Offset\s+0x0000000000001000,\s+\/\/ Length/,
  );
});

test('FADT: iasl decodes hardware-reduced mode, no RTC/VGA/8042, sleep registers at 0x600/0x601', () => {
  const { dsl } = disassemble(t.fadt);
  assert.match(dsl, /Revision : 06/);
  assert.match(dsl, /Hardware Reduced \(V5\) : 1/);
  assert.match(dsl, /CMOS RTC Not Present \(V5\) : 1/);
  assert.match(dsl, /VGA Not Present \(V4\) : 1/);
  assert.match(dsl, /8042 Present on ports 60\/64 \(V2\) : 0/);
  assert.match(dsl, /Reset Register Supported \(V2\) : 0/);
  assert.equal(fieldValues(dsl, 'DSDT Address'), [t.addr['DSDT'], t.addr['DSDT']]);
  assert.match(dsl, /Sleep Control Register : \[Generic Address Structure\][^[]*\[[^\]]*\]\s+Space ID : 01 \[SystemIO\][^]*?Bit Width : 08[^]*?Address : 0000000000000600/);
  assert.match(dsl, /Sleep Status Register : \[Generic Address Structure\][^[]*\[[^\]]*\]\s+Space ID : 01 \[SystemIO\][^]*?Bit Width : 08[^]*?Address : 0000000000000601/);
  assert.match(dsl, /Hypervisor ID : 0000004D4D565354/); // "TSVMM" little-endian
});

test('XSDT: iasl lists the FADT and MADT addresses', () => {
  const { dsl } = disassemble(t.xsdt);
  assert.equal(fieldValues(dsl, 'ACPI Table Address   0'), [t.addr['FACP']]);
  assert.equal(fieldValues(dsl, 'ACPI Table Address   1'), [t.addr['APIC']]);
});

test('RSDP: iasl compiles the same 36 bytes (its own checksums) from the field values', () => {
  // iasl -d does not take a bare RSDP, but its data-table compiler does: describe our fields
  // and let ACPICA lay them out and checksum them.
  const xsdtHex = t.addr['XSDT']!.toString(16).toUpperCase().padStart(16, '0');
  const src = [
    '[0008] Signature : "RSD PTR "',
    '[0001] Checksum : 00',
    '[0006] Oem ID : "TSVMM "',
    '[0001] Revision : 02',
    '[0004] RSDT Address : 00000000',
    '[0004] Length : 00000024',
    `[0008] XSDT Address : ${xsdtHex}`,
    '[0001] Extended Checksum : 00',
    '[0003] Reserved : 000000',
    '',
  ].join('\n');
  assert.equal([...compileDataTable(src)], [...t.rsdp]);
});

for (const vcpus of [1, 4, 8, 64, 255, 300]) {
  test(`MADT for ${vcpus} vCPUs: iasl sees ${vcpus} enabled processors with APIC ids 0..${vcpus - 1}`, () => {
    const { image, rsdpAddr } = buildAcpiTables(tsvmmConfig(vcpus), BASE);
    const { dsl } = disassemble(splitImage(image, BASE, rsdpAddr).madt);
    assert.match(dsl, /Local Apic Address : FEE00000/);
    assert.match(dsl, /PC-AT Compatibility : 1/);
    const ids = [...fieldValues(dsl, 'Local Apic ID'), ...fieldValues(dsl, 'Processor x2Apic ID')];
    assert.equal(ids, Array.from({ length: vcpus }, (_, i) => i));
    assert.is(fieldValues(dsl, 'Processor ID').filter((v) => v !== 0xff).length, Math.min(vcpus, 255));
    assert.is((dsl.match(/Processor Enabled : 1/g) ?? []).length, vcpus);
    assert.is((dsl.match(/Subtable Type : 09 \[Processor Local x2APIC\]/g) ?? []).length, Math.max(0, vcpus - 255));
    assert.equal(fieldValues(dsl, 'I/O Apic ID'), [0]);
    assert.match(dsl, /Subtable Type : 01 \[I\/O APIC\][^]*?Address : FEC00000\s+\[[^\]]*\]\s+Interrupt : 00000000/);
    assert.match(dsl, /Subtable Type : 02 \[Interrupt Source Override\][^]*?Source : 00\s+\[[^\]]*\]\s+Interrupt : 00000002/);
  });
}

test('acpiexec: ACPICA loads the tables, decodes each _CRS and runs hardware-reduced S5', () => {
  const out = acpiexec(
    [
      'evaluate \\_S5_',
      'resources \\_SB.COM1',
      'resources \\_SB.PS2_',
      'resources \\_SB.PEVT',
      'resources \\_SB.VR00',
      'resources \\_SB.VR02',
      'resources \\_SB.HYPC',
      'evaluate \\_SB.HYPC._STA',
      'sleep 5',
    ],
    { 'facp.dat': t.fadt, 'apic.dat': t.madt, 'dsdt.dat': t.dsdt },
  );
  assert.match(out, /FACP .* \(v06 TSVMM  TSVMFACP/);
  assert.match(out, /7 Devices/);
  assert.match(out, /Evaluation of \\_S5_ returned[^]*?\[Package\] Contains 2 Elements:\s+\[Integer\] = 0000000000000005\s+\[Integer\] = 0000000000000000/);
  assert.match(out, /Device: \\_SB.COM1[^]*?\[00\] I\/O Resource\s[^]*?Address Decoding : Decode16[^]*?Address Minimum : 03F8[^]*?Address Length : 08[^]*?\[01\] IRQ Resource[^]*?Triggering : Edge\s+Polarity : ActiveHigh\s+Sharing : Exclusive\s+Interrupt Count : 01\s+Interrupt List : 4 /);
  assert.match(out, /Device: \\_SB.PS2\s[^]*?\[00\] I\/O Resource\s[^]*?Address Minimum : 0060[^]*?Address Length : 01[^]*?\[01\] I\/O Resource\s[^]*?Address Minimum : 0064[^]*?Address Length : 01[^]*?\[02\] IRQ Resource[^]*?Triggering : Edge\s+Polarity : ActiveHigh[^]*?Interrupt List : 1 /);
  assert.match(out, /Device: \\_SB.PEVT[^]*?Address Minimum : 0505[^]*?Address Length : 01/);
  assert.match(out, /Device: \\_SB.VR00[^]*?32-Bit Fixed Memory Range Resource[^]*?Address : D0000000\s+Address Length : 00001000[^]*?Extended IRQ Resource\s+Type : ResourceConsumer\s+Triggering : Edge\s+Polarity : ActiveHigh\s+Sharing : Exclusive[^]*?Dword00 : 00000005/);
  assert.match(out, /Device: \\_SB.VR02[^]*?Address : D0002000[^]*?Dword00 : 00000007/);
  assert.match(out, /Device: \\_SB.HYPC[^]*?Address Minimum : 0700[^]*?Address Length : 40[^]*?Address : C0000000\s+Address Length : 00100000/);
  assert.match(out, /Evaluation of \\_SB.HYPC._STA returned[^]*?\[Integer\] = 000000000000000F/);
  // acpi_hw_extended_sleep is the path that writes SLEEP_CONTROL_REG; it refuses
  // (AE_NOT_EXIST) when the FADT lacks the sleep registers.
  assert.match(out, /Register values for sleep state S5: Sleep-A: 05/);
  assert.match(out, /HwExtendedSleep\s+: Entering sleep state \[S5\]/);
  assert.not.match(out, /AE_NOT_EXIST|AE_AML|AE_BAD|AE_ERROR/);
});

test('PkgLength at its 63/64 and 4095/4096 boundaries: iasl and acpiexec parse every size', () => {
  // Devices whose PkgLength value walks across both boundaries, one byte at a time.
  const sizes = [...Array.from({ length: 12 }, (_, i) => 46 + i), ...Array.from({ length: 12 }, (_, i) => 4076 + i)];
  const devices = sizes.map((n, i) => device(`D${i.toString().padStart(3, '0')}`, [name('DATA', buffer(new Uint8Array(n).fill(0xa5)))]));
  const pkgValues = devices.map((d) => d.length - 2); // Device = ExtOp(2) + PkgLength + body
  // The value counts its own bytes, so 64 and 4096 can never occur: a body of 62 bytes
  // gives 63 (one byte), 63 gives 65 (two bytes); 4093 gives 4095, 4094 gives 4097.
  for (const v of [63, 65, 4095, 4097]) assert.ok(pkgValues.includes(v), `a device PkgLength of exactly ${v}`);
  for (const v of [64, 4096]) assert.not.ok(pkgValues.includes(v), `no PkgLength of ${v}`);
  const encodedSizes = new Set(pkgValues.map((v) => encodePkgLength(v).length));
  assert.equal([...encodedSizes].sort(), [1, 2, 3]);

  const table = dsdtTable(Uint8Array.from(devices.flatMap((d) => [...d])));
  const { dsl } = disassemble(table);
  sizes.forEach((n, i) => assert.match(dsl, new RegExp(`Device \\(D${i.toString().padStart(3, '0')}\\)\\s+\\{\\s+Name \\(DATA, Buffer \\(${hex(n, n > 0xff ? 4 : 2)}\\)`)));
  const out = acpiexec(['evaluate \\D023.DATA', 'evaluate \\D011.DATA'], { 'facp.dat': t.fadt, 'dsdt.dat': table });
  // acpiexec prints buffer lengths in hex.
  assert.match(out, new RegExp(`Evaluating \\\\D023.DATA[^]*?\\[Buffer\\] Length ${sizes[23]!.toString(16).toUpperCase()} =`));
  assert.match(out, new RegExp(`Evaluating \\\\D011.DATA[^]*?\\[Buffer\\] Length ${sizes[11]!.toString(16).toUpperCase()} =`));
});

test.run();
