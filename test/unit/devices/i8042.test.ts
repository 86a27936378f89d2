// The i8042 controller and keyboard (devices/i8042.ts) driven the way Linux's i8042 driver
// (booted with i8042.noaux i8042.nomux i8042.dumbkbd) probes it, takes keys from it and
// reboots through it; then a guest that writes garbage.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { CTRL_ALT_DEL_SET1, CTRL_ALT_DEL_SET2, I8042, OUTPUT_BUFFER_SIZE } from '../../../devices/i8042';
import type { PowerEvent } from '../../../devices/power';
import { Bus } from '../../../devices/bus';
import { serveShared } from '../../../vmm/vcpu/shared';

const DATA = 0, STATUS = 4;
const STR_OBF = 0x01, STR_IBF = 0x02, STR_KEYLOCK = 0x10;
const CTR_KBDINT = 0x01, CTR_KBDDIS = 0x10, CTR_AUXDIS = 0x20, CTR_XLATE = 0x40;
// Linux's i8042.h: bits 12-15 = parameter bytes in, 8-11 = result bytes out, 0-7 = command.
const CMD_CTL_RCTR = 0x0120, CMD_CTL_WCTR = 0x1060, CMD_CTL_TEST = 0x01aa, CMD_KBD_TEST = 0x01ab;
const CMD_WRITE_OUTPUT_PORT = 0x10d1, CMD_NULL = 0x00ff;

function rig() {
  const events: PowerEvent[] = [];
  const irq = { count: 0, trigger() { this.count++; } };
  const k = new I8042(irq, (e) => events.push(e));
  const inb = (port: number): number => {
    const d = new Uint8Array(1).fill(0xee);
    k.read(port, d);
    return d[0]!;
  };
  const outb = (port: number, v: number): void => k.write(port, Uint8Array.of(v));
  /** __i8042_command(): wait for IBF clear, command, parameters, then poll OBF for each result. */
  const command = (cmd: number, params: number[] = []): number[] => {
    const waitWrite = () => {
      for (let i = 0; inb(STATUS) & STR_IBF; i++) if (i > 10_000) throw new Error('IBF stuck');
    };
    waitWrite();
    outb(STATUS, cmd & 0xff);
    for (let i = 0; i < ((cmd >> 12) & 0xf); i++) {
      waitWrite();
      outb(DATA, params[i]!);
    }
    const out: number[] = [];
    for (let i = 0; i < ((cmd >> 8) & 0xf); i++) {
      if (!(inb(STATUS) & STR_OBF)) throw new Error(`command 0x${cmd.toString(16)}: no result byte`);
      out.push(inb(DATA));
    }
    return out;
  };
  /** i8042_flush(): read while OBF, giving up after 16 bytes; returns what it read. */
  const flush = (): number[] => {
    const out: number[] = [];
    while (inb(STATUS) & STR_OBF) {
      if (out.length === 16) throw new Error('i8042_flush: more than 16 bytes (No controller found)');
      out.push(inb(DATA));
    }
    return out;
  };
  /** i8042_interrupt(): one status read, one data read when OBF says a byte waits. */
  const interrupt = (): number | undefined => (inb(STATUS) & STR_OBF ? inb(DATA) : undefined);
  return { k, irq, events, inb, outb, command, flush, interrupt };
}

/** The probe up to a registered, enabled keyboard port; returns the CTR Linux saved. */
function probe(r: ReturnType<typeof rig>): number {
  r.command(CMD_WRITE_OUTPUT_PORT, [0xdf]); // i8042_platform_init: A20 on
  r.command(CMD_NULL); // "null command for SMM firmware"
  assert.equal(r.flush(), [], 'i8042_controller_check: nothing pending');
  assert.equal(r.command(CMD_CTL_TEST), [0x55], 'controller self-test');
  const [a] = r.command(CMD_CTL_RCTR);
  const [b] = r.command(CMD_CTL_RCTR);
  assert.is(a, b, 'a stable CTR read');
  const initial = a!;
  assert.ok(r.inb(STATUS) & STR_KEYLOCK, 'keyboard not locked');
  assert.is(initial & CTR_XLATE, 0, 'XLATE clear: Linux goes direct (raw set 2)');
  let ctr = (initial | CTR_KBDDIS) & ~CTR_KBDINT;
  r.command(CMD_CTL_WCTR, [ctr]);
  assert.equal(r.flush(), []);
  ctr = (ctr & ~CTR_KBDDIS) | CTR_KBDINT; // i8042_enable_kbd_port
  r.command(CMD_CTL_WCTR, [ctr]);
  assert.equal(r.command(CMD_CTL_RCTR), [ctr]);
  return initial;
}

test("Linux's probe: self-test 0x55, stable CTR 0x05 with XLATE clear, CTR writes read back, no reset", () => {
  const r = rig();
  assert.is(probe(r), 0x05);
  assert.equal(r.command(CMD_KBD_TEST), [0x00], 'keyboard interface test passes');
  assert.equal(r.command(0x01d0), [0xdf], 'the output port reads back what i8042_platform_init wrote');
  assert.equal(r.events, []);
});

test('Ctrl-Alt-Del: set 2 press/release bytes, one IRQ edge per byte as the guest reads them', () => {
  const r = rig();
  probe(r);
  r.irq.count = 0;
  assert.ok(r.k.sendCtrlAltDel());
  assert.is(r.irq.count, 1, 'one edge for the first byte');
  const got: number[] = [];
  for (let b = r.interrupt(); b !== undefined; b = r.interrupt()) {
    got.push(b);
    assert.is(r.irq.count, Math.min(got.length + 1, CTRL_ALT_DEL_SET2.length), `edge count after ${got.length} reads`);
  }
  // atkbd's set 2 table: 0x14 Left Ctrl, 0x11 Left Alt, E0 71 Delete; F0 = release.
  assert.equal(got, [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14]);
  assert.is(r.irq.count, got.length, 'no edge without a byte behind it');
  assert.is(r.inb(STATUS) & STR_OBF, 0);
});

test('a guest that turned XLATE on gets the keys in set 1', () => {
  const r = rig();
  probe(r);
  r.command(CMD_CTL_WCTR, [CTR_KBDINT | CTR_XLATE]);
  assert.ok(r.k.sendCtrlAltDel());
  assert.equal(r.flush(), CTRL_ALT_DEL_SET1);
  assert.equal(CTRL_ALT_DEL_SET1, [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]);
});

test('with KBDINT off no edge; turning it on with a byte waiting gives one', () => {
  const r = rig();
  probe(r);
  r.command(CMD_CTL_WCTR, [CTR_KBDDIS]);
  r.irq.count = 0;
  assert.ok(r.k.sendCtrlAltDel());
  assert.is(r.irq.count, 0);
  r.outb(STATUS, 0x60);
  r.outb(DATA, CTR_KBDINT);
  assert.is(r.irq.count, 1);
  assert.is(r.interrupt(), 0x14);
});

test('the buffer is bounded: a second Ctrl-Alt-Del before the guest reads is refused whole', () => {
  const r = rig();
  probe(r);
  assert.ok(r.k.sendCtrlAltDel());
  assert.not.ok(r.k.sendCtrlAltDel(), '11 + 11 > 16');
  assert.equal(r.flush(), CTRL_ALT_DEL_SET2, 'the refused one left nothing behind');
  assert.ok(CTRL_ALT_DEL_SET2.length <= OUTPUT_BUFFER_SIZE);
  assert.ok(r.k.sendCtrlAltDel(), 'room again once read');
});

test('keyboard commands (libps2): ACK, reset → FA AA, identify → FA AB 83, echo; queued keys are dropped', () => {
  const r = rig();
  probe(r);
  r.k.sendCtrlAltDel();
  r.outb(DATA, 0xf5); // disable scanning
  assert.equal(r.flush(), [0xfa], 'the keyboard dropped its queue and ACKed');
  r.outb(DATA, 0xff);
  assert.equal(r.flush(), [0xfa, 0xaa]);
  r.outb(DATA, 0xf2);
  assert.equal(r.flush(), [0xfa, 0xab, 0x83]);
  r.outb(DATA, 0xee);
  assert.equal(r.flush(), [0xee]);
  r.irq.count = 0;
  r.outb(DATA, 0xed); // i8042_panic_blink: set LEDs, then the LED byte
  assert.is(r.irq.count, 1, 'the ACK interrupts (libps2 waits for it in the IRQ handler)');
  assert.is(r.interrupt(), 0xfa);
  r.outb(DATA, 0x05);
  assert.is(r.interrupt(), 0xfa);
});

test('reset: 0xFE at 0x64 (reboot=k), any pulse with line 0, or output port bit 0 cleared', () => {
  const r = rig();
  probe(r);
  r.command(CMD_NULL);
  r.outb(DATA, 0xfe); // a keyboard byte (resend), not a command
  r.command(CMD_WRITE_OUTPUT_PORT, [0xdf]);
  r.command(0x00f1); // pulses lines 1-3, not 0
  assert.equal(r.events, []);
  // Linux's shutdown (i8042_controller_reset), then native_machine_emergency_restart's kb_wait().
  r.flush();
  r.command(CMD_CTL_WCTR, [(0x05 | CTR_KBDDIS | CTR_AUXDIS) & ~CTR_KBDINT]);
  r.command(CMD_CTL_WCTR, [0x05]);
  assert.is(r.inb(STATUS) & STR_IBF, 0, 'kb_wait() sees the input buffer empty');
  r.outb(STATUS, 0xfe);
  assert.equal(r.events, ['reboot']);
  r.outb(STATUS, 0xf0);
  r.command(CMD_WRITE_OUTPUT_PORT, [0xde]);
  assert.equal(r.events, ['reboot', 'reboot', 'reboot']);
});

test('garbage: unknown commands, stray parameters, empty reads and odd widths never throw or overfill', () => {
  const r = rig();
  assert.is(r.inb(DATA), 0, 'reading an empty buffer gives 0');
  assert.is(r.irq.count, 0, '...and no interrupt');
  for (const cmd of [0x00, 0x21, 0x61, 0xa7, 0xa8, 0xa9, 0xad, 0xae, 0xc0, 0xd2, 0xd3, 0xd4, 0xe0]) {
    r.outb(STATUS, cmd);
    assert.ok(r.flush().length <= 1);
  }
  let seed = 0x1234_5678;
  const rand = (n: number) => {
    seed = (Math.imul(seed, 1_103_515_245) + 12_345) >>> 0;
    return (seed >>> 8) % n;
  };
  for (let i = 0; i < 100_000; i++) {
    const port = rand(5);
    const d = new Uint8Array([1, 2, 4][rand(3)]!).fill(rand(256));
    if (rand(2)) r.k.write(port, d);
    else r.k.read(port, d);
    if (rand(50) === 0) r.k.sendCtrlAltDel();
    if (rand(1000) === 0) r.flush(); // throws past 16 bytes
  }
  r.flush();
  assert.ok(r.events.every((e) => e === 'reboot'));
});

test('the status register as a vCPU thread serves it equals the device\'s through the probe, keys, reads and commands', () => {
  const r = rig();
  const bus = new Bus();
  bus.insert(0x60, 5, 'i8042', r.k);
  const claim = bus.claims()[0]!;
  const check = (what: string) => {
    const d = new Uint8Array(1);
    assert.ok(serveShared(claim, 0x60 + STATUS, d, false), `${what}: a 1-byte status read is served`);
    assert.is(d[0], r.inb(STATUS), what);
  };
  check('power-on');
  probe(r);
  check('probed');
  assert.ok(r.k.sendCtrlAltDel());
  check('keys waiting (OBF)');
  r.interrupt();
  check('one key read');
  r.flush();
  check('drained');
  r.outb(STATUS, 0x20);
  check('a command answered (OBF, CMD)');
  r.inb(DATA);
  r.outb(DATA, 0xff);
  check('a keyboard reset answered');
  assert.not.ok(serveShared(claim, 0x60 + DATA, new Uint8Array(1), false), 'data reads reach the device');
  assert.not.ok(serveShared(claim, 0x60 + STATUS, new Uint8Array(1), true), 'commands reach the device');
});

test.run();
