// The small devices through which a guest ends its life: the ACPI hardware-reduced sleep
// control register (S5 = poweroff) and pvpanic; the i8042's reset line (command 0xfe) is in
// i8042.ts, with the rest of that controller. They only report the event; the VMM
// decides what ending the VM means.

import type { BusDevice } from './bus';

export type PowerEvent = 'poweroff' | 'reboot' | 'panic';

/** SLP_EN bit and SLP_TYP field of a SLEEP_CONTROL_REG write (ACPI 6.5 §4.8.3.7). */
export const SLEEP_CONTROL_SLP_EN = 0x20;
export const sleepControlType = (value: number): number => (value >> 2) & 0x7;
/** SLP_TYP of S5 (soft off): the DSDT's \_S5_ object announces it. */
export const S5_SLEEP_TYPE = 5;
/** What Linux writes to SLEEP_CONTROL_REG to power off: (5 << 2) | SLP_EN = 0x34. */
export const SLEEP_CONTROL_S5 = (S5_SLEEP_TYPE << 2) | SLEEP_CONTROL_SLP_EN;

/** FADT SLEEP_CONTROL_REG (offset 0) and SLEEP_STATUS_REG (offset 1). */
export class AcpiSleep implements BusDevice {
  constructor(private readonly onEvent: (e: PowerEvent) => void) {}

  read(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }

  write(offset: number, data: Uint8Array): void {
    const v = data[0]!;
    if (offset === 0 && v & SLEEP_CONTROL_SLP_EN && sleepControlType(v) === S5_SLEEP_TYPE) this.onEvent('poweroff');
  }
}

const PVPANIC_PANICKED = 1;
const PVPANIC_CRASH_LOADED = 2;

/** pvpanic ISA device: reads its capabilities, a write with PANICKED reports the panic. */
export class PvPanic implements BusDevice {
  constructor(private readonly onEvent: (e: PowerEvent) => void) {}

  read(_offset: number, data: Uint8Array): void {
    data.fill(0);
    data[0] = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
  }

  write(_offset: number, data: Uint8Array): void {
    if (data[0]! & PVPANIC_PANICKED) this.onEvent('panic');
  }
}
