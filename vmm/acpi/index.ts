// Entry point of tsvmm's ACPI tables: validates an AcpiConfig and lays out RSDP, XSDT,
// FADT, MADT and DSDT as one image for guest physical `base`. Owns the layout (order,
// alignment, fitting the RSDP window) and the identity the tables announce (hypervisor id,
// IOAPIC id). Every address, port and interrupt comes from the AcpiConfig (vmm/machine.ts
// fills it from vmm/layout.ts). It only returns bytes: writing them into guest memory,
// pointing boot_params.acpi_rsdp_addr at them and emulating the sleep ports is not its job.

import { ACPI_ADDR as ACPI_WINDOW_START, ACPI_END as ACPI_WINDOW_END } from '../layout';
import { buildDsdtAml } from './dsdt';
import { AcpiError, FADT_SIZE, HEADER_SIZE, RSDP_SIZE, dsdt, fadt, madt, rsdp, xsdt } from './tables';

export { AcpiError } from './tables';
export { AmlError } from './aml';

export interface AcpiConfig {
  vcpus: number;
  /** Register windows of the local APICs and the IOAPIC (MADT). */
  lapicAddr: number;
  ioapicAddr: number;
  /** The 8-bit FADT SLEEP_CONTROL_REG and SLEEP_STATUS_REG ports. */
  sleepPorts: { control: number; status: number };
  /** COM1. */
  serial?: { port: number; irq: number };
  /** The i8042 keyboard controller: one data and one status/command port, an ISA IRQ. */
  i8042?: { dataPort: number; commandPort: number; irq: number };
  pvpanicPort?: number;
  virtioMmio: readonly { base: number; size: number; gsi: number }[];
  hypercall?: { ioBase: number; ioLen: number; memBase: number; memSize: number };
}

const TABLE_ALIGN = 16;

/**
 * The IOAPIC's MADT id. 0 matches the ID register of KVM's in-kernel IOAPIC after reset
 * (and QEMU's and Firecracker's tables); xAPIC-era IOAPIC ids are not shared with local
 * APIC ids, and 64-bit Linux accepts any id that no other IOAPIC uses.
 */
export const IOAPIC_ID = 0;

export const HYPERVISOR_ID = 'TSVMM';

/** Most virtio-mmio devices the DSDT names (\_SB.VR00…VRFF). */
export const MAX_VIRTIO_DEVICES = 256;

function check(ok: boolean, what: string): void {
  if (!ok) throw new AcpiError(`invalid ACPI config: ${what}`);
}
const isInt = (v: number, min: number, max: number): boolean => Number.isInteger(v) && v >= min && v <= max;

function validate(cfg: AcpiConfig): void {
  check(isInt(cfg.vcpus, 1, 0xffff_fffe), `vcpus ${cfg.vcpus} must be an integer >= 1`);
  check(isInt(cfg.lapicAddr, 0, 0xffff_ffff) && isInt(cfg.ioapicAddr, 0, 0xffff_ffff), `APIC addresses 0x${cfg.lapicAddr.toString(16)}/0x${cfg.ioapicAddr.toString(16)} (32-bit)`);
  check(isInt(cfg.sleepPorts.control, 0, 0xffff) && isInt(cfg.sleepPorts.status, 0, 0xffff), `sleep ports 0x${cfg.sleepPorts.control.toString(16)}/0x${cfg.sleepPorts.status.toString(16)}`);
  if (cfg.serial) {
    check(isInt(cfg.serial.port, 0, 0xfff8), `serial port ${cfg.serial.port} (8 ports from it must fit in 0..0xffff)`);
    check(isInt(cfg.serial.irq, 0, 15), `serial irq ${cfg.serial.irq} must be an ISA IRQ 0-15`);
  }
  if (cfg.i8042) {
    const k = cfg.i8042;
    check(isInt(k.dataPort, 0, 0xffff) && isInt(k.commandPort, 0, 0xffff), `i8042 ports 0x${k.dataPort.toString(16)}/0x${k.commandPort.toString(16)}`);
    check(isInt(k.irq, 0, 15), `i8042 irq ${k.irq} must be an ISA IRQ 0-15`);
  }
  if (cfg.pvpanicPort !== undefined) check(isInt(cfg.pvpanicPort, 0, 0xffff), `pvpanic port ${cfg.pvpanicPort}`);
  check(cfg.virtioMmio.length <= MAX_VIRTIO_DEVICES, `${cfg.virtioMmio.length} virtio-mmio devices (max ${MAX_VIRTIO_DEVICES})`);
  cfg.virtioMmio.forEach((d, i) => {
    check(isInt(d.base, 0, Number.MAX_SAFE_INTEGER) && isInt(d.size, 1, 0xffff_ffff), `virtio-mmio ${i}: base 0x${d.base.toString(16)} size 0x${d.size.toString(16)}`);
    check(isInt(d.gsi, 0, 0xffff_ffff), `virtio-mmio ${i}: gsi ${d.gsi}`);
  });
  if (cfg.hypercall) {
    const h = cfg.hypercall;
    check(isInt(h.ioLen, 1, 255) && isInt(h.ioBase, 0, 0x1_0000 - h.ioLen), `hypercall ports 0x${h.ioBase.toString(16)}+${h.ioLen} (1-255 ports below 0x10000)`);
    check(isInt(h.memBase, 0, Number.MAX_SAFE_INTEGER) && isInt(h.memSize, 1, 0xffff_ffff), `hypercall memory 0x${h.memBase.toString(16)}+0x${h.memSize.toString(16)}`);
  }
}

const align = (v: number, a: number): number => Math.ceil(v / a) * a;

/** Lays out RSDP + XSDT + FADT + MADT + DSDT contiguously from `base` (guest physical, in the RSDP window), 16-byte aligned each. */
export function buildAcpiTables(cfg: AcpiConfig, base: number): { rsdpAddr: number; image: Uint8Array } {
  validate(cfg);
  check(Number.isInteger(base) && base % TABLE_ALIGN === 0, `base 0x${base.toString(16)} is not 16-byte aligned`);
  check(base >= ACPI_WINDOW_START && base < ACPI_WINDOW_END, `base 0x${base.toString(16)} is outside 0x${ACPI_WINDOW_START.toString(16)}-0x${(ACPI_WINDOW_END - 1).toString(16)}`);

  // Sizes do not depend on addresses, so the address-free tables are built first.
  const dsdtTable = dsdt(buildDsdtAml(cfg));
  const madtTable = madt({ vcpus: cfg.vcpus, lapicAddr: cfg.lapicAddr, ioApic: { id: IOAPIC_ID, addr: cfg.ioapicAddr } });
  const xsdtSize = HEADER_SIZE + 8 * 2; // FADT, MADT

  const rsdpAddr = base;
  const xsdtAddr = align(rsdpAddr + RSDP_SIZE, TABLE_ALIGN);
  const fadtAddr = align(xsdtAddr + xsdtSize, TABLE_ALIGN);
  const madtAddr = align(fadtAddr + FADT_SIZE, TABLE_ALIGN);
  const dsdtAddr = align(madtAddr + madtTable.length, TABLE_ALIGN);
  const end = dsdtAddr + dsdtTable.length;
  if (end > ACPI_WINDOW_END) {
    throw new AcpiError(
      `ACPI tables need ${end - base} bytes from 0x${base.toString(16)} but must end by 0x${ACPI_WINDOW_END.toString(16)} ` +
        `(MADT ${madtTable.length} bytes for ${cfg.vcpus} vCPUs, DSDT ${dsdtTable.length} bytes for ${cfg.virtioMmio.length} virtio devices)`,
    );
  }

  const image = new Uint8Array(end - base);
  const place = (addr: number, bytes: Uint8Array): void => image.set(bytes, addr - base);
  place(rsdpAddr, rsdp(xsdtAddr));
  place(xsdtAddr, xsdt([fadtAddr, madtAddr]));
  place(
    fadtAddr,
    fadt({ dsdtAddress: dsdtAddr, sleepControlPort: cfg.sleepPorts.control, sleepStatusPort: cfg.sleepPorts.status, hypervisorId: HYPERVISOR_ID }),
  );
  place(madtAddr, madtTable);
  place(dsdtAddr, dsdtTable);
  return { rsdpAddr, image };
}
