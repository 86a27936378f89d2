// The small devices through which a guest ends its life: the ACPI hardware-reduced sleep
// control register (S5 = poweroff) and pvpanic (0x505); the i8042's reset line (0x64 ← 0xfe)
// is in i8042.ts, with the rest of that controller. They only report the event; the VMM
// decides what ending the VM means.

import type { BusDevice } from './bus';

export type PowerEvent = 'poweroff' | 'reboot' | 'panic';

const SLP_EN = 0x20;
const SLP_TYP_S5 = 5;

/** FADT SLEEP_CONTROL_REG (offset 0) and SLEEP_STATUS_REG (offset 1). */
export class AcpiSleep implements BusDevice {
  constructor(private readonly onEvent: (e: PowerEvent) => void) {}

  read(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }

  write(offset: number, data: Uint8Array): void {
    const v = data[0]!;
    if (offset === 0 && v & SLP_EN && ((v >> 2) & 7) === SLP_TYP_S5) this.onEvent('poweroff');
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
