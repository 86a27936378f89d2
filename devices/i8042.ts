// The i8042 PS/2 controller at ports 0x60 (data) and 0x64 (status/command) with an AT keyboard
// behind it: enough of both for Linux's i8042 and atkbd drivers to bind a keyboard, for the
// host to type Ctrl-Alt-Del into it, and for the guest to reset the machine through it.
// Owns the controller's registers and its output buffer; the interrupt line and what a reset
// means are handed in. There is no AUX (mouse) port: tsvmm boots Linux with `i8042.noaux`.
//
// The protocol, as Linux drives it (drivers/input/serio/i8042.c, atkbd.c):
// - Reading 0x64 gives the status: OBF (a byte waits at 0x60), IBF (the controller is busy;
//   never here, writes are handled at once), the system flag, CMD (the last write went to
//   0x64) and "keyboard not locked" (Linux warns "Keylock active" without it).
// - Writing 0x64 is a controller command. Some answer one byte at 0x60 (0x20 read the
//   control register CTR, 0xAA self-test → 0x55, 0xAB keyboard interface test → 0x00,
//   0xD0 read the output port); some take a parameter byte, the next write to 0x60 (0x60
//   write CTR, 0xD1 write the output port). 0xF0–0xFF pulse output-port lines low for the
//   zero bits of their low nibble: line 0 is the CPU reset, so 0xFE is "reboot"
//   (reboot=k). The output port's bit 0 is that line too: writing it as 0 also resets.
// - Writing 0x60 with no parameter pending is a byte for the keyboard. A keyboard answers
//   every command with ACK 0xFA (after discarding what it had queued); reset 0xFF adds the
//   self-test result 0xAA, identify 0xF2 adds its id AB 83, echo 0xEE answers 0xEE only.
//   With `i8042.dumbkbd` Linux never writes to the keyboard, but it does at panic (LEDs).
// - The CTR: KBDINT makes every byte that reaches the output buffer raise IRQ 1; XLATE
//   makes the controller translate the keyboard's scancode set 2 into set 1. Linux reads
//   the CTR at probe time and, when XLATE is clear, keeps it clear ("direct" mode) and
//   expects raw set 2; so the reset value here has XLATE clear (as in Firecracker) and
//   the keys go out in set 2. A guest that turns XLATE on gets them in set 1.
// - Linux's interrupt handler reads one byte per IRQ, so each byte gets its own edge: when
//   it reaches the head of the buffer, and again after each read that leaves one waiting.
// A real 8042 holds one output byte; this one queues up to OUTPUT_BUFFER_SIZE so that a
// whole key sequence can be handed over at once. That bound is also Linux's: i8042_flush()
// gives up ("No controller found") if more than 16 bytes keep coming.
// The status register, which Linux polls around every command, is a shared register: vCPU
// threads read it from a cell this device rewrites after each change (bus.ts SharedRegister).

import type { BusDevice, SharedRegister } from './bus';
import type { IrqLine } from './irq';
import type { PowerEvent } from './power';

/** Bus offsets within the 0x60..0x64 range. */
const DATA = 0;
const STATUS_COMMAND = 4;

const STATUS_OBF = 0x01;
const STATUS_SYSTEM_FLAG = 0x04;
const STATUS_CMD = 0x08;
const STATUS_UNLOCKED = 0x10;

const CTR_KBDINT = 0x01;
const CTR_SYSTEM_FLAG = 0x04;
const CTR_XLATE = 0x40;
/** After power-on: keyboard interrupt on, POST passed, no translation (Linux then stays direct). */
const CTR_RESET_VALUE = CTR_KBDINT | CTR_SYSTEM_FLAG;

const OUTPUT_PORT_RESET_HIGH = 0x01; // 0 = CPU reset asserted
const OUTPUT_PORT_A20 = 0x02;

const CMD_READ_CTR = 0x20;
const CMD_WRITE_CTR = 0x60;
const CMD_SELF_TEST = 0xaa;
const CMD_KBD_TEST = 0xab;
const CMD_READ_OUTPUT_PORT = 0xd0;
const CMD_WRITE_OUTPUT_PORT = 0xd1;
const CMD_PULSE_FIRST = 0xf0;
/** Commands whose parameter byte follows at 0x60 (write RAM 0x61–0x7F, write kbd/aux buffers, send to aux). */
const takesParameter = (cmd: number): boolean => (cmd >= 0x60 && cmd <= 0x7f) || (cmd >= 0xd1 && cmd <= 0xd4);

const SELF_TEST_OK = 0x55;
const KBD_TEST_OK = 0x00;

const KBD_ACK = 0xfa;
const KBD_BAT_OK = 0xaa;
const KBD_CMD_ECHO = 0xee;
const KBD_CMD_IDENTIFY = 0xf2;
const KBD_CMD_RESET = 0xff;
const KBD_ID = [0xab, 0x83];

/** Bytes the output buffer holds at most (Linux's I8042_BUFFER_SIZE). */
export const OUTPUT_BUFFER_SIZE = 16;

/**
 * Press Ctrl, Alt, Del, then release them in reverse order, in scancode set 2 and set 1 (what
 * the controller would turn set 2 into with XLATE on). The releases are more than Firecracker
 * sends: without them a guest that handles Ctrl-Alt-Del in userspace keeps three keys held
 * down, autorepeating.
 */
export const CTRL_ALT_DEL_SET2 = [0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14];
export const CTRL_ALT_DEL_SET1 = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

export class I8042 implements BusDevice {
  private ctr = CTR_RESET_VALUE;
  private outputPort = OUTPUT_PORT_RESET_HIGH | OUTPUT_PORT_A20;
  private lastWriteWasCommand = false;
  /** A controller command waiting for its parameter byte at 0x60. */
  private pending?: number;
  private output: number[] = [];
  /** The status register as vCPU threads serve it (syncStatus() after every change). */
  private readonly statusCell = new Int32Array(new SharedArrayBuffer(4));

  constructor(
    private readonly irq: IrqLine,
    private readonly onEvent: (e: PowerEvent) => void,
  ) {
    this.syncStatus();
  }

  sharedRegisters(): readonly SharedRegister[] {
    return [{ offset: STATUS_COMMAND, size: 1, kind: 'load', cell: this.statusCell }];
  }

  private syncStatus(): void {
    Atomics.store(this.statusCell, 0, this.status());
  }

  /** Types Ctrl-Alt-Del; false (nothing queued) when the buffer lacks room: the guest is not reading it. */
  sendCtrlAltDel(): boolean {
    const keys = this.ctr & CTR_XLATE ? CTRL_ALT_DEL_SET1 : CTRL_ALT_DEL_SET2;
    if (OUTPUT_BUFFER_SIZE - this.output.length < keys.length) return false;
    this.queue(keys);
    this.syncStatus();
    return true;
  }

  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (offset === STATUS_COMMAND) data[0] = this.status();
    else if (offset === DATA) {
      data[0] = this.output.shift() ?? 0;
      if (this.output.length > 0) this.interrupt();
    }
    this.syncStatus();
  }

  write(offset: number, data: Uint8Array): void {
    const v = data[0]!;
    if (offset === STATUS_COMMAND) {
      this.lastWriteWasCommand = true;
      this.command(v);
    } else if (offset === DATA) {
      this.lastWriteWasCommand = false;
      const cmd = this.pending;
      this.pending = undefined;
      if (cmd === undefined) this.keyboard(v);
      else this.parameter(cmd, v);
    }
    this.syncStatus();
  }

  private status(): number {
    return (
      (this.output.length > 0 ? STATUS_OBF : 0) |
      (this.ctr & CTR_SYSTEM_FLAG ? STATUS_SYSTEM_FLAG : 0) |
      (this.lastWriteWasCommand ? STATUS_CMD : 0) |
      STATUS_UNLOCKED
    );
  }

  private command(cmd: number): void {
    this.pending = takesParameter(cmd) ? cmd : undefined;
    if (cmd === CMD_READ_CTR) this.reply(this.ctr);
    else if (cmd === CMD_SELF_TEST) this.reply(SELF_TEST_OK);
    else if (cmd === CMD_KBD_TEST) this.reply(KBD_TEST_OK);
    else if (cmd === CMD_READ_OUTPUT_PORT) this.reply(this.outputPort);
    else if (cmd >= CMD_PULSE_FIRST && !(cmd & OUTPUT_PORT_RESET_HIGH)) this.onEvent('reboot');
    // Anything else (AUX, password, RAM beyond the CTR, vendor commands) is ignored: no answer.
  }

  private parameter(cmd: number, v: number): void {
    if (cmd === CMD_WRITE_CTR) {
      const wasEnabled = this.ctr & CTR_KBDINT;
      this.ctr = v;
      // The IRQ line follows OBF && KBDINT: enabling it with a byte waiting interrupts now.
      if (!wasEnabled && this.output.length > 0) this.interrupt();
    } else if (cmd === CMD_WRITE_OUTPUT_PORT) {
      this.outputPort = v;
      if (!(v & OUTPUT_PORT_RESET_HIGH)) this.onEvent('reboot');
    }
  }

  /** A byte for the keyboard: it drops what it had queued and answers. */
  private keyboard(v: number): void {
    this.output = [];
    if (v === KBD_CMD_ECHO) this.queue([KBD_CMD_ECHO]);
    else if (v === KBD_CMD_RESET) this.queue([KBD_ACK, KBD_BAT_OK]);
    else if (v === KBD_CMD_IDENTIFY) this.queue([KBD_ACK, ...KBD_ID]);
    else this.queue([KBD_ACK]);
  }

  /** A controller answer overwrites the output buffer, as it does on the one-byte original. */
  private reply(v: number): void {
    this.output = [];
    this.queue([v]);
  }

  private queue(bytes: readonly number[]): void {
    const wasEmpty = this.output.length === 0;
    for (const b of bytes) if (this.output.length < OUTPUT_BUFFER_SIZE) this.output.push(b);
    if (wasEmpty && this.output.length > 0) this.interrupt();
  }

  /** The guest's handler reads the status after the edge: the cell is rewritten first. */
  private interrupt(): void {
    this.syncStatus();
    if (this.ctr & CTR_KBDINT) this.irq.trigger();
  }
}
