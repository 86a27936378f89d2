// The console's escape keys (vmm/console/escape.ts): QEMU's Ctrl-A conventions, across chunk
// boundaries, with everything else passed through byte for byte.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { EscapeParser, type ConsoleAction } from '../../../vmm/console/escape';

const bytes = (s: string) => Uint8Array.from(Buffer.from(s, 'latin1'));
/** Actions as readable strings: input as its text, commands by name. */
function feed(p: EscapeParser, ...chunks: string[]): string[] {
  return chunks.flatMap((c) => p.feed(bytes(c)).map(show));
}
const show = (a: ConsoleAction) => (a.kind === 'input' ? `in:${Buffer.from(a.bytes).toString('latin1')}` : a.kind);

test('plain input passes through unchanged, control keys included', () => {
  const all = Array.from({ length: 256 }, (_, i) => i).filter((i) => i !== 0x01);
  const out = new EscapeParser().feed(Uint8Array.from(all));
  assert.is(out.length, 1);
  assert.equal(Array.from((out[0] as { bytes: Uint8Array }).bytes), all);
});

test('Ctrl-A x quits and nothing after it is sent', () => {
  const p = new EscapeParser();
  assert.equal(feed(p, 'ls\x01xrm -rf /\r'), ['in:ls', 'quit']);
  assert.equal(feed(p, 'more'), []);
  assert.equal(feed(new EscapeParser(), '\x01X'), ['quit'], 'upper case too');
});

test('Ctrl-A h and ? ask for help, b and c for a break', () => {
  assert.equal(feed(new EscapeParser(), 'a\x01hb\x01?\x01c\x01b'), ['in:a', 'help', 'in:b', 'help', 'break', 'break']);
});

test('Ctrl-A Ctrl-A sends one Ctrl-A, joined to the text around it', () => {
  assert.equal(feed(new EscapeParser(), 'x\x01\x01y'), ['in:x\x01y']);
  assert.equal(feed(new EscapeParser(), '\x01\x01\x01\x01'), ['in:\x01\x01']);
});

test('an escape split across reads still counts', () => {
  const p = new EscapeParser();
  assert.equal(feed(p, 'ab\x01'), ['in:ab']);
  assert.equal(feed(p, 'hcd'), ['help', 'in:cd']);
  assert.equal(feed(p, '\x01', '\x01'), ['in:\x01']);
  assert.equal(feed(p, '\x01', 'x'), ['quit']);
});

test('an unknown key after Ctrl-A is dropped, as QEMU does', () => {
  assert.equal(feed(new EscapeParser(), 'a\x01zb'), ['in:ab']);
});

test.run();
