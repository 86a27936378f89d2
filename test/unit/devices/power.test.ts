// The devices that end a guest's life (devices/power.ts): ACPI S5, pvpanic. The i8042's reset
// command is tested with the rest of the controller in i8042.test.ts.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { AcpiSleep, type PowerEvent, PvPanic } from '../../../devices/power';

function rig<T>(make: (on: (e: PowerEvent) => void) => T) {
  const events: PowerEvent[] = [];
  return { dev: make((e) => events.push(e)), events };
}
const b = (v: number) => Uint8Array.of(v);

test('ACPI sleep control: SLP_TYP 5 | SLP_EN (0x34) powers off; S3 or no SLP_EN do not', () => {
  const { dev, events } = rig((on) => new AcpiSleep(on));
  dev.write(0, b((3 << 2) | 0x20)); // S3
  dev.write(0, b(5 << 2)); // S5 without SLP_EN
  dev.write(1, b(0x34)); // the status register
  assert.equal(events, []);
  dev.write(0, b(0x34));
  assert.equal(events, ['poweroff']);
});

test('pvpanic: capabilities read PANICKED|CRASH_LOADED; write 1 reports a panic, 2 does not', () => {
  const { dev, events } = rig((on) => new PvPanic(on));
  const d = new Uint8Array(1);
  dev.read(0, d);
  assert.is(d[0], 0x03);
  dev.write(0, b(2));
  dev.write(0, b(0));
  assert.equal(events, []);
  dev.write(0, b(1));
  assert.equal(events, ['panic']);
});

test.run();
