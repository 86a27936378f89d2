// The DSDT's AML: tsvmm's device namespace (COM1, the i8042, pvpanic, virtio-mmio devices,
// the hypercall device) and the \_S5_ sleep object. Owns device names and which resources each
// device declares; encodings come from aml.ts, table framing from tables.ts. It must not
// invent addresses: every port, range and GSI comes from the AcpiConfig it is given.

import { HC_ACPI_HID } from '../../devices/hypercall/registers';
import { S5_SLEEP_TYPE } from '../../devices/power';
import { concat, crs, device, extendedInterrupt, hid, integer, io, irq, memory32Fixed, name, pkg, qwordMemory, scope, sta, uid } from './aml';
import type { AcpiConfig } from './index';

/** Memory32Fixed when the range is below 4 GiB, else QWordMemory. */
function memory(base: number, size: number): Uint8Array {
  return base + size <= 2 ** 32 ? memory32Fixed(base, size) : qwordMemory(base, size);
}

/** Virtio-mmio device i is \_SB.VRxx (two hex digits). */
export function virtioDeviceName(i: number): string {
  return `VR${i.toString(16).toUpperCase().padStart(2, '0')}`;
}

export function buildDsdtAml(cfg: AcpiConfig): Uint8Array {
  const devices: Uint8Array[] = [];
  if (cfg.serial) {
    const { port, irq: line } = cfg.serial;
    devices.push(
      device('COM1', [
        hid('PNP0501'),
        uid(1),
        sta(),
        crs([io({ min: port, length: 8 }), irq([line], { edge: true })]),
      ]),
    );
  }
  if (cfg.i8042) {
    // Linux's i8042 driver learns the controller from PNP (pnpacpi turns this device into
    // one): a keyboard id such as PNP0303, data port = first I/O resource, command port =
    // second, each exactly one port long, keyboard IRQ = first IRQ. Without it, and with the
    // FADT's 8042 flag clear, the driver gives up ("PNP: No PS/2 controller found"). No
    // PNP0F13 mouse device: there is no AUX port.
    const { dataPort, commandPort, irq: line } = cfg.i8042;
    devices.push(
      device('PS2_', [
        hid('PNP0303'),
        sta(),
        crs([io({ min: dataPort, length: 1 }), io({ min: commandPort, length: 1 }), irq([line], { edge: true })]),
      ]),
    );
  }
  if (cfg.pvpanicPort !== undefined) {
    // Linux's pvpanic driver matches QEMU0001 and takes its first I/O resource.
    devices.push(device('PEVT', [hid('QEMU0001'), sta(), crs([io({ min: cfg.pvpanicPort, length: 1 })])]));
  }
  cfg.virtioMmio.forEach((d, i) => {
    // LNRO0005 is the id drivers/virtio/virtio_mmio.c matches on ACPI systems; it wants
    // one memory resource (the register window) and one interrupt.
    devices.push(
      device(virtioDeviceName(i), [
        hid('LNRO0005'),
        uid(i),
        sta(),
        crs([memory(d.base, d.size), extendedInterrupt([d.gsi], { edge: true })]),
      ]),
    );
  });
  if (cfg.hypercall) {
    const h = cfg.hypercall;
    devices.push(
      device('HYPC', [
        hid(HC_ACPI_HID),
        uid(0),
        sta(),
        crs([io({ min: h.ioBase, length: h.ioLen }), memory(h.memBase, h.memSize)]),
      ]),
    );
  }
  return concat([
    scope('\\_SB_', devices),
    // Hardware-reduced S5: Linux writes (SLP_TYP << 2) | SLP_EN to SLEEP_CONTROL_REG.
    name('\\_S5_', pkg([integer(S5_SLEEP_TYPE), integer(0)])),
  ]);
}
