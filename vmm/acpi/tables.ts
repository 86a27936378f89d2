// ACPI table layouts: the common header and checksum, RSDP, XSDT, FADT, MADT and the DSDT
// wrapper. Owns every fixed byte offset of these tables (one place each); it does not
// decide what devices exist (vmm/acpi/dsdt.ts) nor where tables go (vmm/acpi/index.ts),
// and never touches guest memory — it only returns bytes.
// Reference: ACPI 6.5 §5.2 (RSDP, SDT header, XSDT, FADT, MADT).

import { TsvmmError } from '../../lib/errors';

/** A table that cannot be built as asked (bad field, too many entries, does not fit). */
export class AcpiError extends TsvmmError {}

/** Identity written into every table header. */
export const OEM_ID = 'TSVMM ';
export const CREATOR_ID = 'TSVM';
const OEM_REVISION = 1;
const CREATOR_REVISION = 1;

/** Bytes of the System Description Table header that starts every table but the RSDP. */
export const HEADER_SIZE = 36;

/** Offsets in the SDT header (§5.2.6). */
const Header = {
  signature: 0, // [4]
  length: 4, // u32
  revision: 8, // u8
  checksum: 9, // u8
  oemId: 10, // [6]
  oemTableId: 16, // [8]
  oemRevision: 24, // u32
  creatorId: 28, // [4]
  creatorRevision: 32, // u32
} as const;

/** The byte that makes the sum of `bytes` 0 mod 256 when it replaces a zero in them. */
export function checksum(bytes: Uint8Array): number {
  let sum = 0;
  for (const b of bytes) sum += b;
  return (0x100 - (sum & 0xff)) & 0xff;
}

/** Sum of bytes mod 256: 0 for a correctly checksummed table. */
export function byteSum(bytes: Uint8Array): number {
  let sum = 0;
  for (const b of bytes) sum += b;
  return sum & 0xff;
}

function putAscii(out: Uint8Array, off: number, s: string, len: number): void {
  if (s.length !== len || !/^[\x20-\x7e]*$/.test(s)) throw new AcpiError(`ACPI field "${s}" must be ${len} printable ASCII chars`);
  for (let i = 0; i < len; i++) out[off + i] = s.charCodeAt(i);
}

/**
 * A complete table: header (with `signature`, `revision`, OEM table id "TSVM" + signature)
 * followed by `body`, checksummed. `body` is the table past the 36-byte header.
 */
export function sdt(signature: string, revision: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + body.length);
  const dv = new DataView(out.buffer);
  putAscii(out, Header.signature, signature, 4);
  dv.setUint32(Header.length, out.length, true);
  out[Header.revision] = revision;
  putAscii(out, Header.oemId, OEM_ID, 6);
  putAscii(out, Header.oemTableId, `TSVM${signature}`, 8);
  dv.setUint32(Header.oemRevision, OEM_REVISION, true);
  putAscii(out, Header.creatorId, CREATOR_ID, 4);
  dv.setUint32(Header.creatorRevision, CREATOR_REVISION, true);
  out.set(body, HEADER_SIZE);
  out[Header.checksum] = checksum(out);
  return out;
}

// ---- RSDP (§5.2.5) -------------------------------------------------------------------

export const RSDP_SIZE = 36;
const Rsdp = {
  signature: 0, // "RSD PTR " [8]
  checksum: 8, // covers bytes 0..19 (the ACPI 1.0 part)
  oemId: 9, // [6]
  revision: 15, // 2 = ACPI 2.0+
  rsdtAddress: 16, // u32; 0: we only have an XSDT
  length: 20, // u32, whole structure
  xsdtAddress: 24, // u64
  extendedChecksum: 32, // covers all 36 bytes
} as const;

export function rsdp(xsdtAddress: number): Uint8Array {
  const out = new Uint8Array(RSDP_SIZE);
  const dv = new DataView(out.buffer);
  putAscii(out, Rsdp.signature, 'RSD PTR ', 8);
  putAscii(out, Rsdp.oemId, OEM_ID, 6);
  out[Rsdp.revision] = 2;
  dv.setUint32(Rsdp.length, RSDP_SIZE, true);
  dv.setBigUint64(Rsdp.xsdtAddress, BigInt(xsdtAddress), true);
  out[Rsdp.checksum] = checksum(out.subarray(0, 20));
  out[Rsdp.extendedChecksum] = checksum(out);
  return out;
}

// ---- XSDT (§5.2.8) -------------------------------------------------------------------

export function xsdt(tableAddresses: readonly number[]): Uint8Array {
  const body = new Uint8Array(8 * tableAddresses.length);
  const dv = new DataView(body.buffer);
  tableAddresses.forEach((a, i) => dv.setBigUint64(8 * i, BigInt(a), true));
  return sdt('XSDT', 1, body);
}

// ---- FADT (§5.2.9), revision 6 ------------------------------------------------------

export const FADT_REVISION = 6;
/** ACPI 6.0+ FADT length, through the Hypervisor Vendor Identity. */
export const FADT_SIZE = 276;
/** Offsets in the FADT (from the table start, header included). */
const Fadt = {
  firmwareCtrl: 36, // u32, FACS: none (optional in hardware-reduced mode)
  dsdt: 40, // u32
  preferredPmProfile: 45,
  sciInt: 46, // u16: no SCI in hardware-reduced mode
  iapcBootArch: 109, // u16
  flags: 112, // u32
  resetReg: 116, // GAS: left zero, no reset register
  minorVersion: 131,
  xDsdt: 140, // u64
  sleepControlReg: 244, // GAS
  sleepStatusReg: 256, // GAS
  hypervisorVendorId: 268, // [8]
} as const;

/** IAPC_BOOT_ARCH bits (§5.2.9.3). */
export const IapcBootArch = {
  legacyDevices: 1 << 0,
  i8042: 1 << 1,
  vgaNotPresent: 1 << 2,
  msiNotSupported: 1 << 3,
  pcieAspmControls: 1 << 4,
  cmosRtcNotPresent: 1 << 5,
} as const;

/** Fixed feature flags (§5.2.9.1). */
export const FadtFlags = {
  /** No fixed-feature power button (there is no PM1 block to carry it). */
  powerButton: 1 << 4,
  sleepButton: 1 << 5,
  resetRegSupported: 1 << 10,
  hwReducedAcpi: 1 << 20,
} as const;

export const AddressSpace = { systemMemory: 0, systemIo: 1 } as const;
/** Generic Address Structure (§5.2.3.2, 12 bytes) access size 1: byte access. */
const ACCESS_BYTE = 1;

function putGas(dv: DataView, off: number, space: number, bitWidth: number, accessSize: number, address: number): void {
  dv.setUint8(off, space);
  dv.setUint8(off + 1, bitWidth);
  dv.setUint8(off + 2, 0); // bit offset
  dv.setUint8(off + 3, accessSize);
  dv.setBigUint64(off + 4, BigInt(address), true);
}

export interface FadtOptions {
  dsdtAddress: number;
  /** I/O port of the 8-bit SLEEP_CONTROL_REG (S5 writes (5 << 2) | 0x20 to it). */
  sleepControlPort: number;
  /** I/O port of the 8-bit SLEEP_STATUS_REG. */
  sleepStatusPort: number;
  /** Up to 8 ASCII chars, zero padded: the Hypervisor Vendor Identity. */
  hypervisorId: string;
}

export function fadt(opts: FadtOptions): Uint8Array {
  // Built in table coordinates (the offsets above count the header); sdt() fills the header.
  const table = new Uint8Array(FADT_SIZE);
  const dv = new DataView(table.buffer);
  dv.setUint32(Fadt.firmwareCtrl, 0, true);
  dv.setUint32(Fadt.dsdt, opts.dsdtAddress, true);
  dv.setUint8(Fadt.preferredPmProfile, 0); // unspecified
  dv.setUint16(Fadt.sciInt, 0, true);
  dv.setUint16(Fadt.iapcBootArch, IapcBootArch.vgaNotPresent | IapcBootArch.cmosRtcNotPresent, true);
  dv.setUint32(Fadt.flags, FadtFlags.hwReducedAcpi | FadtFlags.powerButton | FadtFlags.sleepButton, true);
  dv.setUint8(Fadt.minorVersion, 0);
  dv.setBigUint64(Fadt.xDsdt, BigInt(opts.dsdtAddress), true);
  putGas(dv, Fadt.sleepControlReg, AddressSpace.systemIo, 8, ACCESS_BYTE, opts.sleepControlPort);
  putGas(dv, Fadt.sleepStatusReg, AddressSpace.systemIo, 8, ACCESS_BYTE, opts.sleepStatusPort);
  if (!/^[\x20-\x7e]{1,8}$/.test(opts.hypervisorId)) throw new AcpiError(`hypervisor id "${opts.hypervisorId}" must be 1-8 ASCII chars`);
  for (let i = 0; i < opts.hypervisorId.length; i++) table[Fadt.hypervisorVendorId + i] = opts.hypervisorId.charCodeAt(i);
  return sdt('FACP', FADT_REVISION, table.subarray(HEADER_SIZE));
}

// ---- MADT (§5.2.12) ------------------------------------------------------------------

export const MADT_REVISION = 5;
const MADT_PCAT_COMPAT = 1 << 0;
const LAPIC_ENABLED = 1 << 0;
/** xAPIC ids stop at 254: 0xff is the broadcast id, so higher ids need x2APIC entries. */
export const MAX_XAPIC_ID = 254;

/** Interrupt controller structure types and sizes. */
const MadtEntry = {
  localApic: { type: 0, size: 8 },
  ioApic: { type: 1, size: 12 },
  interruptSourceOverride: { type: 2, size: 10 },
  localApicNmi: { type: 4, size: 6 },
  localX2Apic: { type: 9, size: 16 },
  localX2ApicNmi: { type: 0x0a, size: 12 },
} as const;

export interface MadtOptions {
  vcpus: number;
  /** Guest physical address of every local APIC's registers. */
  lapicAddr: number;
  ioApic: { id: number; addr: number };
}

export function madt(opts: MadtOptions): Uint8Array {
  const { vcpus } = opts;
  if (!Number.isInteger(vcpus) || vcpus < 1 || vcpus > 0xffff_fffe) throw new AcpiError(`MADT: ${vcpus} vCPUs`);
  if (!Number.isInteger(opts.ioApic.id) || opts.ioApic.id < 0 || opts.ioApic.id > 0xff) throw new AcpiError(`MADT: IOAPIC id ${opts.ioApic.id}`);
  const xapics = Math.min(vcpus, MAX_XAPIC_ID + 1);
  const x2apics = vcpus - xapics;
  const size =
    8 +
    xapics * MadtEntry.localApic.size +
    x2apics * MadtEntry.localX2Apic.size +
    MadtEntry.ioApic.size +
    MadtEntry.interruptSourceOverride.size +
    MadtEntry.localApicNmi.size +
    (x2apics > 0 ? MadtEntry.localX2ApicNmi.size : 0);
  const body = new Uint8Array(size);
  const dv = new DataView(body.buffer);
  dv.setUint32(0, opts.lapicAddr, true);
  dv.setUint32(4, MADT_PCAT_COMPAT, true);
  let off = 8;
  const entry = (e: { type: number; size: number }): number => {
    const at = off;
    dv.setUint8(at, e.type);
    dv.setUint8(at + 1, e.size);
    off += e.size;
    return at;
  };
  // vCPU i: ACPI processor UID i, APIC id i (the lead's CPUID setup uses the same ids).
  for (let i = 0; i < xapics; i++) {
    const at = entry(MadtEntry.localApic);
    dv.setUint8(at + 2, i); // processor UID
    dv.setUint8(at + 3, i); // APIC id
    dv.setUint32(at + 4, LAPIC_ENABLED, true);
  }
  for (let i = xapics; i < vcpus; i++) {
    const at = entry(MadtEntry.localX2Apic);
    dv.setUint32(at + 4, i, true); // x2APIC id
    dv.setUint32(at + 8, LAPIC_ENABLED, true);
    dv.setUint32(at + 12, i, true); // processor UID
  }
  {
    const at = entry(MadtEntry.ioApic);
    dv.setUint8(at + 2, opts.ioApic.id);
    dv.setUint32(at + 4, opts.ioApic.addr, true);
    dv.setUint32(at + 8, 0, true); // GSI base
  }
  {
    // ISA IRQ 0 (PIT) is wired to IOAPIC pin 2, as on PCs and in QEMU/KVM's irqchip.
    const at = entry(MadtEntry.interruptSourceOverride);
    dv.setUint8(at + 2, 0); // bus: ISA
    dv.setUint8(at + 3, 0); // source IRQ
    dv.setUint32(at + 4, 2, true); // GSI
    dv.setUint16(at + 8, 0, true); // flags: conforms to the bus (edge, active high)
  }
  {
    // LINT1 of every local APIC is the NMI input (what QEMU and real firmware declare).
    const at = entry(MadtEntry.localApicNmi);
    dv.setUint8(at + 2, 0xff); // all processors
    dv.setUint16(at + 3, 0, true); // flags: conforms
    dv.setUint8(at + 5, 1); // LINT1
  }
  if (x2apics > 0) {
    const at = entry(MadtEntry.localX2ApicNmi);
    dv.setUint16(at + 2, 0, true); // flags
    dv.setUint32(at + 4, 0xffff_ffff, true); // all processors
    dv.setUint8(at + 8, 1); // LINT1
  }
  return sdt('APIC', MADT_REVISION, body);
}

// ---- DSDT (§5.2.11.1) ----------------------------------------------------------------

/** Revision 2: AML integers are 64-bit. */
export const DSDT_REVISION = 2;

export function dsdt(aml: Uint8Array): Uint8Array {
  return sdt('DSDT', DSDT_REVISION, aml);
}
