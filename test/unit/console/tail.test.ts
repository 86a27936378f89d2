// The console tail every machine keeps (vmm/console/tail.ts): the last lines, bounded in lines
// and bytes, fed a byte at a time as the UART does, carriage returns dropped, an endless line
// cut to its end, the unfinished last line included.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ConsoleTail, CONSOLE_TAIL_BYTES, CONSOLE_TAIL_LINES } from '../../../vmm/console/tail';

const bytes = (s: string) => Uint8Array.from(s, (c) => c.charCodeAt(0));
/** What the 16550 does: one push per byte. */
function feed(t: ConsoleTail, s: string): void {
  for (const b of bytes(s)) t.push(Uint8Array.of(b));
}

test('keeps the last 64 lines by default, oldest first, and counts every byte', () => {
  const t = new ConsoleTail();
  let all = '';
  for (let i = 0; i < 200; i++) all += `[    ${i}.000000] line ${i}\r\n`;
  feed(t, all);
  const lines = t.snapshot();
  assert.is(lines.length, CONSOLE_TAIL_LINES);
  assert.is(lines[0], '[    136.000000] line 136');
  assert.is(lines.at(-1), '[    199.000000] line 199');
  assert.is(t.total, all.length);
  assert.is(t.text(), lines.join('\n'));
});

test('bounded in bytes: long lines push out old ones, the total stays within the limit', () => {
  const t = new ConsoleTail(1000, 1024);
  for (let i = 0; i < 50; i++) t.push(bytes(`${String(i).padStart(2, '0')}${'x'.repeat(98)}\n`));
  const lines = t.snapshot();
  assert.ok(lines.join('\n').length + 1 <= 1024, `${lines.length} lines`);
  assert.is(lines.length, 10);
  assert.ok(lines.at(-1)!.startsWith('49'));
});

test('an endless line is kept to its last maxBytes, and the unfinished last line is part of the tail', () => {
  const t = new ConsoleTail(8, 64);
  feed(t, 'done\n');
  t.push(bytes('a'.repeat(1000) + 'END'));
  const lines = t.snapshot();
  assert.is(lines.length, 1, 'the unfinished line takes the whole budget');
  assert.is(lines[0]!.length, 64);
  assert.ok(lines[0]!.endsWith('aEND'));
  feed(t, '\nnext');
  assert.equal(t.snapshot(), ['next'], 'the cut line and the new one would exceed 64 bytes: the old one goes');
  feed(t, '\nmore');
  assert.equal(t.snapshot(), ['next', 'more']);
});

test('within the bounds with the default sizes too, and a bad size is refused', () => {
  const t = new ConsoleTail();
  t.push(bytes('y'.repeat(3 * CONSOLE_TAIL_BYTES)));
  assert.is(t.snapshot()[0]!.length, CONSOLE_TAIL_BYTES);
  assert.equal(new ConsoleTail().snapshot(), []);
  assert.throws(() => new ConsoleTail(0, 10), /at least one line/);
});

test.run();
