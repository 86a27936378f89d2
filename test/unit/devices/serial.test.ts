// The 16550A (devices/serial.ts) driven the way Linux's 8250 driver probes and uses it.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { RX_FIFO_SIZE, Serial16550 } from '../../../devices/serial';
import { Bus } from '../../../devices/bus';
import { serveShared } from '../../../vmm/vcpu/shared';
import { close, eventfd, eventfdDrain } from '../../../kvm/libc';

const THR = 0, RBR = 0, DLL = 0, IER = 1, DLM = 1, IIR = 2, FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7;

function uart(fd?: number) {
  const out: number[] = [];
  const irq = { count: 0, fd, trigger() { this.count++; } };
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

/** The UART as a vCPU thread reaches it: shared registers first, the rest through the device (a forwarded access). */
function vcpuUart(fd?: number) {
  const u = uart(fd);
  const bus = new Bus();
  bus.insert(0x3f8, 8, 'com1', u.s);
  const claim = bus.claims()[0]!;
  let forwarded = 0;
  const access = (reg: number, data: Uint8Array, isWrite: boolean) => {
    if (serveShared(claim, 0x3f8 + reg, data, isWrite)) return;
    forwarded++;
    if (isWrite) u.s.write(reg, data);
    else u.s.read(reg, data);
  };
  const rd = (reg: number) => {
    const d = new Uint8Array(1);
    access(reg, d, false);
    return d[0]!;
  };
  const wr = (reg: number, v: number) => access(reg, Uint8Array.of(v), true);
  /**
   * Every register a vCPU thread serves reads as the device would answer it now (IIR, whose
   * read acknowledges THRE, is left to the tests that read it).
   */
  const check = (what: string) => {
    for (const reg of [IER, LCR, MCR, LSR, MSR, SCR]) {
      const d = new Uint8Array(1);
      if (!serveShared(claim, 0x3f8 + reg, d, false)) continue;
      assert.is(d[0], u.rd(reg), `${what}: register ${reg}`);
    }
  };
  return { ...u, devRd: u.rd, claim, rd, wr, check, forwarded: () => forwarded };
}

test('registers a vCPU thread serves read as the device\'s, through the 8250 probe, input, a break, THRE and a FIFO clear', () => {
  const v = vcpuUart();
  v.check('reset');
  v.wr(LCR, 0x80);
  v.wr(DLL, 0x01);
  v.wr(DLM, 0x00);
  v.check('DLAB: IER reads DLM');
  assert.is(v.rd(DLM), 0);
  v.wr(LCR, 0x03);
  v.wr(FCR, 0x07);
  v.wr(MCR, 0x10 | 0x0b);
  v.check('loopback');
  assert.is(v.rd(MSR), 0xb0);
  v.wr(MCR, 0x0b);
  v.wr(SCR, 0x5a);
  v.check('scratch');
  assert.is(v.rd(SCR), 0x5a);
  v.wr(IER, 0x05);
  v.s.enqueueInput(Uint8Array.of(0x61, 0x62));
  v.check('data ready');
  assert.is(v.rd(LSR) & 0x01, 0x01);
  assert.is(v.rd(IIR), 0xc4);
  assert.is(v.rd(RBR), 0x61);
  assert.is(v.rd(RBR), 0x62);
  v.check('read empty');
  assert.is(v.rd(IIR), 0xc1);
  assert.ok(v.s.sendBreak());
  v.check('a break at the head');
  assert.is(v.rd(LSR) & 0x11, 0x11);
  assert.is(v.rd(IIR), 0xc6);
  v.rd(RBR);
  v.s.enqueueInput(Uint8Array.of(1, 2, 3));
  v.wr(FCR, 0x03);
  v.check('FIFO cleared');
  assert.is(v.rd(LSR), 0x60);
  v.wr(IER, 0x07);
  v.check('THRE pending');
  const before = v.forwarded();
  assert.is(v.rd(IIR), 0xc2, 'THRE, read in the vCPU thread');
  assert.is(v.rd(IIR), 0xc1, 'and acknowledged by that read');
  assert.is(v.forwarded(), before, 'neither read reached the device');
  assert.is(v.devRd(IIR), 0xc1, 'the device agrees: THRE is no longer pending');
  v.check('THRE acknowledged');
});

test('IER writes that raise no interrupt are stored by the vCPU thread; enabling THRE, or RDA with data waiting, and DLM reach the device', () => {
  const v = vcpuUart();
  v.wr(FCR, 0x01);
  const served = (reg: number, val: number) => {
    const f = v.forwarded();
    v.wr(reg, val);
    return v.forwarded() === f;
  };
  // Linux's console write with the port idle (IER = RDA | RLS): clear, the line, restore.
  v.wr(IER, 0x05);
  for (const line of ['one\n', 'two\n']) {
    assert.is(v.rd(IER), 0x05);
    assert.ok(served(IER, 0), 'IER cleared in the vCPU thread');
    for (const c of line) v.wr(THR, c.charCodeAt(0));
    assert.ok(served(IER, 0x05), 'IER restored in the vCPU thread');
  }
  v.s.flush();
  assert.equal(String.fromCharCode(...v.out), 'one\ntwo\n');
  assert.is(v.irq.count, 0, 'no THRE interrupt: THRE was never enabled');
  assert.is(v.devRd(IER), 0x05, 'the device reads the IER the vCPU stored');
  // Enabling THRE raises an interrupt at once: the device's.
  const irqs = v.irq.count;
  assert.not.ok(served(IER, 0x07), 'IER with THRE reaches the device');
  assert.is(v.irq.count, irqs + 1);
  assert.is(v.rd(IIR), 0xc2);
  // Turning THRE off in the vCPU thread drops a pending THRE, as the device does.
  v.wr(IER, 0x07);
  assert.ok(served(IER, 0x05));
  assert.is(v.rd(IIR), 0xc1, 'nothing pending');
  assert.is(v.devRd(IIR), 0xc1, 'the device agrees');
  v.wr(THR, 0x41);
  v.s.flush();
  assert.is(v.irq.count, irqs + 2, 'drained bytes raise no THRE interrupt with THRE off (the one more is the 0x07 write)');
  // RDA enabled while data waits: the device raises the interrupt.
  assert.ok(served(IER, 0));
  v.s.enqueueInput(Uint8Array.of(0x61));
  assert.is(v.irq.count, irqs + 2, 'no RDA interrupt while RDA is off');
  assert.not.ok(served(IER, 0x01), 'enabling RDA with data waiting reaches the device');
  assert.is(v.irq.count, irqs + 3);
  assert.is(v.rd(IIR), 0xc4);
  assert.ok(served(IER, 0), 'disabling it is the vCPU thread\'s');
  assert.is(v.rd(IIR), 0xc1);
  assert.is(v.rd(RBR), 0x61);
  assert.ok(served(IER, 0x01), 'enabling RDA with nothing waiting is the vCPU thread\'s');
  v.s.enqueueInput(Uint8Array.of(0x62));
  assert.is(v.irq.count, irqs + 4, 'input then interrupts: the device read the IER the vCPU stored');
  assert.is(v.rd(IIR), 0xc4);
  assert.is(v.rd(RBR), 0x62);
  // In DLAB, offset 1 is DLM: the device's.
  v.wr(LCR, 0x83);
  assert.not.ok(served(DLM, 0x00));
  assert.not.ok(served(DLM, 0x01));
  assert.is(v.rd(DLM), 0x01);
  v.wr(LCR, 0x03);
  assert.is(v.rd(IER), 0x01, 'IER kept across DLAB');
  v.check('end');
});


test('THR writes from a vCPU thread go to the ring: output in order when main drains it, then a THRE interrupt', () => {
  const v = vcpuUart();
  v.wr(FCR, 0x01);
  v.wr(IER, 0x02);
  assert.is(v.rd(IIR), 0xc2);
  const before = v.forwarded();
  const irqs = v.irq.count;
  for (const c of 'abc') v.wr(THR, c.charCodeAt(0));
  assert.is(v.forwarded(), before, 'no THR write reached the device');
  assert.equal(v.out, [], 'nothing out before main drains');
  assert.is(v.rd(LSR), 0x60, 'the guest is never made to wait: THR empty');
  assert.is(v.rd(IIR), 0xc1, 'no THRE until the bytes are out');
  v.s.flush();
  assert.equal(String.fromCharCode(...v.out), 'abc');
  assert.is(v.irq.count, irqs + 1, 'one THRE interrupt for the batch');
  assert.is(v.rd(IIR), 0xc2);
  // A THR write the device sees itself (here: a test's) comes after what the ring holds.
  v.wr(THR, 0x64);
  v.s.write(THR, Uint8Array.of(0x65));
  assert.equal(String.fromCharCode(...v.out), 'abcde');
  // IER without THRE: bytes drained raise no interrupt.
  v.wr(IER, 0);
  const quiet = v.irq.count;
  v.wr(THR, 0x66);
  v.s.flush();
  assert.is(v.irq.count, quiet);
  assert.equal(String.fromCharCode(...v.out), 'abcdef');
});

test('with an irqfd line the vCPU thread raises THRE for what it pushes: one edge per acknowledged THRE, none while THRE is off, none from main\'s drain; RDA keeps its priority', () => {
  const fd = eventfd();
  try {
    const v = vcpuUart(fd);
    /** Edges the vCPU thread wrote into the line since the last call (main's go to irq.count). */
    const edges = () => Number(eventfdDrain(fd));
    v.wr(FCR, 0x01);
    v.wr(IER, 0x02);
    assert.is(v.irq.count, 1, 'enabling THRE: the device\'s interrupt, from main');
    assert.is(v.rd(IIR), 0xc2);
    assert.is(v.rd(IIR), 0xc1, 'acknowledged');
    const before = v.forwarded();
    for (const c of 'abc') v.wr(THR, c.charCodeAt(0));
    assert.is(v.forwarded(), before, 'no THR write reached the device');
    assert.is(edges(), 1, 'one edge for the three pushes: THRE became pending once');
    assert.is(v.rd(IIR), 0xc2, 'THRE pending before main drained anything');
    assert.equal(v.out, []);
    v.s.flush();
    assert.equal(String.fromCharCode(...v.out), 'abc');
    assert.is(v.irq.count, 1, 'main\'s drain raised nothing');
    assert.is(v.rd(IIR), 0xc1, 'the read above acknowledged it');
    v.wr(THR, 0x64);
    assert.is(edges(), 1, 'the next push after the acknowledgement: a new edge');
    // The console's pattern: IER cleared, bytes written, IER restored.
    assert.ok(serveShared(v.claim, 0x3f8 + IER, Uint8Array.of(0), true), 'IER cleared in the vCPU thread');
    for (const c of 'ef') v.wr(THR, c.charCodeAt(0));
    assert.is(edges(), 0, 'no edge while THRE is off');
    assert.is(v.rd(IIR), 0xc1);
    v.wr(IER, 0x03);
    assert.is(v.irq.count, 2, 'restoring THRE: the device raises it (THR is empty)');
    assert.is(edges(), 0);
    // Input waiting: IIR shows RDA over THRE; the push still marks THRE pending.
    assert.is(v.rd(IIR), 0xc2);
    v.s.enqueueInput(Uint8Array.of(0x7a));
    v.wr(THR, 0x67);
    assert.is(edges(), 1);
    assert.is(v.rd(IIR), 0xc4, 'RDA has priority');
    assert.is(v.rd(RBR), 0x7a);
    assert.is(v.rd(IIR), 0xc2, 'then the pending THRE');
    assert.is(v.devRd(IIR), 0xc1, 'the device agrees it was acknowledged');
    v.s.flush();
    assert.equal(String.fromCharCode(...v.out), 'abcdefg', 'every byte out, in order');
    v.check('end');
  } finally {
    close(fd);
  }
});

test('THR in DLAB or loopback is not the ring\'s: the divisor latch, and the byte comes back through RBR', () => {
  const v = vcpuUart();
  v.wr(LCR, 0x83);
  const before = v.forwarded();
  v.wr(DLL, 0x0c);
  assert.is(v.forwarded(), before + 1);
  assert.is(v.rd(DLL), 0x0c);
  v.wr(LCR, 0x03);
  v.wr(MCR, 0x10);
  v.wr(THR, 0x41);
  v.s.flush();
  assert.equal(v.out, []);
  assert.is(v.rd(RBR), 0x41);
  v.wr(MCR, 0x08);
  v.wr(THR, 0x42);
  v.s.flush();
  assert.equal(v.out, [0x42]);
});

test.run();
