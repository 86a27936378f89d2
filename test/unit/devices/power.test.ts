// The devices that end a guest's life (devices/power.ts): i8042 reset, ACPI S5, pvpanic.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { AcpiSleep, I8042, type PowerEvent, PvPanic } from '../../../devices/power';

function rig<T>(make: (on: (e: PowerEvent) => void) => T) {
  const events: PowerEvent[] = [];
  return { dev: make((e) => events.push(e)), events };
}
const b = (v: number) => Uint8Array.of(v);

test('i8042: 0xfe on the command port reboots; other commands and ports do nothing', () => {
  const { dev, events } = rig((on) => new I8042(on));
  for (const cmd of [0xaa, 0xad, 0xae, 0xd1, 0x20, 0xff]) dev.write(4, b(cmd));
  dev.write(0, b(0xfe)); // the data port: a keyboard byte, not a command
  assert.equal(events, []);
  dev.write(4, b(0xfe));
  assert.equal(events, ['reboot']);
});

test('i8042: status says input buffer empty (Linux waits for that before the reset)', () => {
  const { dev } = rig((on) => new I8042(on));
  const d = new Uint8Array(1).fill(0xff);
  dev.read(4, d);
  assert.is(d[0]! & 0x02, 0, 'IBF clear');
  assert.is(d[0]! & 0x01, 0, 'OBF clear: nothing to read');
});

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
