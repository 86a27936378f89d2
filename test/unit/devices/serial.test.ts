// The 16550A (devices/serial.ts) driven the way Linux's 8250 driver probes and uses it.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { RX_FIFO_SIZE, Serial16550 } from '../../../devices/serial';

const THR = 0, RBR = 0, DLL = 0, IER = 1, DLM = 1, IIR = 2, FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7;

function uart() {
  const out: number[] = [];
  const irq = { count: 0, trigger() { this.count++; } };
  const s = new Serial16550(irq, (b) => out.push(...b));
  const rd = (reg: number) => {
    const d = new Uint8Array(1);
    s.read(reg, d);
    return d[0]!;
  };
  const wr = (reg: number, v: number) => s.write(reg, Uint8Array.of(v));
  return { s, out, irq, rd, wr };
}

test('scratch register round trip (8250 probe step)', () => {
  const u = uart();
  for (const v of [0xa5, 0x5a, 0x00, 0xff]) {
    u.wr(SCR, v);
    assert.is(u.rd(SCR), v);
  }
});

test('IER keeps only the low nibble; 0 and 0x0f read back', () => {
  const u = uart();
  u.wr(IER, 0);
  assert.is(u.rd(IER), 0);
  u.wr(IER, 0xff);
  assert.is(u.rd(IER), 0x0f);
});

test('FCR enable → IIR reports FIFOs (0xc0): a 16550A, not a 16750', () => {
  const u = uart();
  u.wr(IER, 0);
  assert.is(u.rd(IIR), 0x01, 'no FIFO, no interrupt');
  u.wr(FCR, 0x01);
  assert.is(u.rd(IIR), 0xc1);
  assert.is(u.rd(IIR) >> 6, 3, '8250 autoconfig: 3 = 16550A');
  u.wr(FCR, 0x21); // FCR7_64BYTE: a 16750 would show it in IIR bit 5
  assert.is(u.rd(IIR) >> 5, 6);
  u.wr(FCR, 0);
  assert.is(u.rd(IIR) & 0xc0, 0);
});

test('loopback: MCR outputs appear in MSR (DTR→DSR, RTS→CTS, OUT1→RI, OUT2→DCD)', () => {
  const u = uart();
  u.wr(MCR, 0x10 | 0x0a); // LOOP | RTS | OUT2, what the 8250 probe writes
  assert.is(u.rd(MSR) & 0xf0, 0x90);
  u.wr(MCR, 0x10 | 0x05); // LOOP | DTR | OUT1
  assert.is(u.rd(MSR) & 0xf0, 0x60);
  u.wr(MCR, 0x10);
  assert.is(u.rd(MSR) & 0xf0, 0);
  u.wr(MCR, 0x0b);
  assert.is(u.rd(MSR) & 0xb0, 0xb0, 'not in loopback: DCD, DSR, CTS asserted');
});

test('loopback: THR bytes come back through RBR, not the output', () => {
  const u = uart();
  u.wr(MCR, 0x10);
  u.wr(THR, 0x42);
  assert.equal(u.out, []);
  assert.is(u.rd(LSR) & 1, 1);
  assert.is(u.rd(RBR), 0x42);
});

test('transmit: LSR says THRE|TEMT, THR write reaches the output callback', () => {
  const u = uart();
  assert.is(u.rd(LSR) & 0x60, 0x60);
  for (const c of 'hi\n') u.wr(THR, c.charCodeAt(0));
  assert.is(String.fromCharCode(...u.out), 'hi\n');
  assert.is(u.rd(LSR) & 0x61, 0x60, 'still empty, no data ready');
});

test('THRE interrupt: enabling it triggers the line, IIR reports THRE once', () => {
  const u = uart();
  u.wr(FCR, 0x01);
  u.wr(IER, 0x02);
  assert.is(u.irq.count, 1);
  assert.is(u.rd(IIR), 0xc2);
  assert.is(u.rd(IIR), 0xc1, 'reading IIR acknowledged THRE');
  u.wr(THR, 0x41);
  assert.is(u.irq.count, 2, 'each transmitted byte empties THR again');
  assert.is(u.rd(IIR), 0xc2);
  u.wr(IER, 0);
  u.wr(THR, 0x41);
  assert.is(u.irq.count, 2, 'no interrupt while disabled');
  assert.is(u.rd(IIR), 0xc1);
});

test('receive: LSR DR, RBR in order, RDA interrupt and IIR, then empty', () => {
  const u = uart();
  u.wr(IER, 0x01);
  assert.is(u.rd(LSR) & 1, 0);
  assert.is(u.s.enqueueInput(Uint8Array.of(1, 2, 3)), 3);
  assert.is(u.irq.count, 1);
  assert.is(u.rd(IIR) & 0x0f, 0x04, 'received data available');
  assert.is(u.rd(LSR) & 1, 1);
  assert.equal([u.rd(RBR), u.rd(RBR), u.rd(RBR)], [1, 2, 3]);
  assert.is(u.rd(LSR) & 1, 0);
  assert.is(u.rd(IIR) & 0x0f, 0x01);
  assert.is(u.rd(RBR), 0, 'empty FIFO reads 0');
});

test('RDA has priority over THRE in IIR', () => {
  const u = uart();
  u.wr(IER, 0x03);
  u.s.enqueueInput(Uint8Array.of(9));
  assert.is(u.rd(IIR) & 0x0f, 0x04);
  u.rd(RBR);
  assert.is(u.rd(IIR) & 0x0f, 0x02, 'THRE still pending after the data is read');
});

test('enabling RDA while data waits raises the interrupt (the line follows IER & condition)', () => {
  const u = uart();
  u.s.enqueueInput(Uint8Array.of(7));
  assert.is(u.irq.count, 0);
  u.wr(IER, 0x01);
  assert.is(u.irq.count, 1);
});

test('the receive FIFO is bounded: enqueueInput returns what fit; FCR clears it', () => {
  const u = uart();
  const big = new Uint8Array(RX_FIFO_SIZE + 10).map((_, i) => i);
  assert.is(u.s.enqueueInput(big), RX_FIFO_SIZE);
  assert.is(u.s.rxSpace, 0);
  assert.is(u.s.enqueueInput(Uint8Array.of(1)), 0);
  assert.is(u.rd(RBR), 0);
  assert.is(u.s.rxSpace, 1);
  u.wr(FCR, 0x03);
  assert.is(u.rd(LSR) & 1, 0);
  assert.is(u.s.rxSpace, RX_FIFO_SIZE);
});

test('DLAB: divisor latch read/write, no output, no IER change', () => {
  const u = uart();
  u.wr(IER, 0x01);
  u.wr(LCR, 0x83);
  u.wr(DLL, 0x01);
  u.wr(DLM, 0x00);
  assert.is(u.rd(DLL), 0x01);
  assert.is(u.rd(DLM), 0x00);
  assert.equal(u.out, [], 'a divisor write is not a character');
  u.wr(LCR, 0x03);
  assert.is(u.rd(LCR), 0x03);
  assert.is(u.rd(IER), 0x01, 'IER untouched by the DLM write');
  u.wr(THR, 0x55);
  assert.equal(u.out, [0x55]);
});

test('a break arrives after the queued input as a NUL with LSR.BI and a line status interrupt', () => {
  const u = uart();
  u.wr(IER, 0x05); // RDA + receiver line status, as Linux's 8250 driver enables them
  u.s.enqueueInput(Uint8Array.of(0x61));
  const before = u.irq.count;
  assert.ok(u.s.sendBreak());
  assert.ok(u.irq.count > before, 'the break interrupts');
  assert.is(u.rd(IIR) & 0x0f, 0x04, 'data first');
  assert.is(u.rd(LSR) & 0x11, 0x01, 'no BI on the data byte');
  assert.is(u.rd(RBR), 0x61);
  assert.is(u.rd(IIR) & 0x0f, 0x06, 'then the line status');
  assert.is(u.rd(LSR) & 0x11, 0x11, 'BI with DR on the break character');
  assert.is(u.rd(RBR), 0x00);
  assert.is(u.rd(LSR) & 0x11, 0x00, 'nothing after it');
  assert.is(u.rd(IIR) & 0x0f, 0x01);
});

test('a break does not fit in a full FIFO', () => {
  const u = uart();
  u.s.enqueueInput(new Uint8Array(RX_FIFO_SIZE));
  assert.not.ok(u.s.sendBreak());
});

test.run();
