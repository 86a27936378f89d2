// Log lines built from what a guest or a client sent: escaped (one event is one line, no
// terminal escapes, no forged `tsvmm:` lines) and rate-limited with a suppressed-lines summary.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { PassThrough } from 'node:stream';
import { Bus } from '../../../devices/bus';
import { HYPERCALL_PORT, HYPERCALL_PORT_LEN } from '../../../vmm/layout';
import { escapeControl, formatLine, guestText, RateLimitedLog } from '../../../vmm/log';
import { Paravirt } from '../../../vmm/paravirt';
import { HINT_PROGRAMS } from '../../../vmm/hints/programs';
import { fakeHost } from '../hints/fake-host';
import { SimAgent } from '../hypercall/agent';

/** Every character that could end a line, move the cursor or reorder text. */
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;

test('escapeControl: C0, DEL, C1, line separators and bidi controls are escaped; the rest is kept', () => {
  assert.is(escapeControl('a\nb\r\tc\x1b[31mred\x7f\x9b\u2028\u202eé€'), 'a\\nb\\r\\tc\\x1b[31mred\\x7f\\x9b\\u2028\\u202eé€');
  assert.is(escapeControl('plain text /path/x'), 'plain text /path/x');
  const line = formatLine({ time: new Date(0), id: 'id', level: 'info', thread: 'main', origin: 'vmm', message: 'x\r\ntsvmm: forged\x1b]0;title\x07' });
  assert.not.match(line, UNSAFE);
  assert.ok(line.endsWith('x\\r\\ntsvmm: forged\\x1b]0;title\\x07'));
});

test('guestText: quoted, printable ASCII only, bounded', () => {
  assert.is(guestText('agent 1.0'), '"agent 1.0"');
  assert.is(guestText('a"b\\c\n\u00e9'), '"a\\"b\\\\c\\n\\xe9"');
  const long = guestText('x'.repeat(300), 64);
  assert.is(long, `"${'x'.repeat(64)}"...(300 chars)`);
  assert.match(guestText('\u{1F600}'), /^"[\x20-\x7e]+"$/);
});

test('RateLimitedLog: a burst passes, then the rate; the dropped lines are counted in one summary line', () => {
  const lines: string[] = [];
  let t = 0;
  const l = new RateLimitedLog((m) => lines.push(m), 'virtio-vsock', { burst: 3, perSecond: 2, now: () => t, summaryMs: 60_000 });
  for (let i = 0; i < 10_000; i++) l.line(`reset ${i}`);
  assert.equal(lines, ['reset 0', 'reset 1', 'reset 2']);
  assert.is(l.pending, 9997);
  t += 500; // one token
  l.line('after');
  assert.equal(lines.slice(3), ['virtio-vsock: 9997 similar lines suppressed', 'after']);
  l.line('dropped');
  l.flush();
  assert.equal(lines.slice(5), ['virtio-vsock: 1 similar line suppressed']);
  l.flush();
  assert.is(lines.length, 6);
});

test('RateLimitedLog: the summary comes by itself when no further line does', async () => {
  const lines: string[] = [];
  const l = new RateLimitedLog((m) => lines.push(m), 'x', { burst: 1, perSecond: 0.001, summaryMs: 20 });
  l.line('a');
  l.line('b');
  l.line('c');
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(lines, ['a', 'x: 2 similar lines suppressed']);
});

test('the guest agent HELLO name cannot forge log lines or send terminal escapes', () => {
  const lines: string[] = [];
  const shm = new Uint8Array(64 * 1024);
  const pv = new Paravirt({ shm, host: fakeHost(2).host, programs: HINT_PROGRAMS, connect: async () => new PassThrough(), log: (m) => lines.push(m) });
  const bus = new Bus();
  bus.insert(HYPERCALL_PORT, HYPERCALL_PORT_LEN, 'hypercall', pv.device);
  const evil = 'agent\ntsvmm: guest powered off (exit 0)\r\x1b[2J\x1b]0;pwned\x07' + '\u202e'.repeat(8) + 'z'.repeat(170);
  assert.is(new SimAgent(bus, shm).hello(evil).status, 0);
  assert.is(lines.length, 1);
  assert.not.match(lines[0]!, UNSAFE);
  assert.not.match(lines[0]!, /[^\x20-\x7e]/);
  assert.ok(lines[0]!.length < 200, `${lines[0]!.length} characters`);
  assert.match(lines[0]!, /^guest agent "agent\\ntsvmm: guest powered off/);
  pv.close();
});

test.run();
