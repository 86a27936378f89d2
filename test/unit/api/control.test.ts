// Control's three log doors: `log` (routine lines, silenced by --quiet), `debug` (only at
// --log-level debug) and `error` (a vCPU's crash report, a failed VM's final line), which --quiet
// must not silence: a VM that vanished under `tsvmm run --quiet` once left no word of why
// (docs/testing.md, "vsock.test").
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Control } from '../../../vmm/api/control';
import { FakeMachine, tmp } from './fake';

/** What `fn` wrote to stderr. */
async function stderrOf(fn: () => Promise<void>): Promise<string> {
  const write = process.stderr.write;
  let out = '';
  process.stderr.write = ((chunk: string | Uint8Array) => { out += String(chunk); return true; }) as typeof process.stderr.write;
  try { await fn(); } finally { process.stderr.write = write; }
  return out;
}

const noStart = () => Promise.reject(new Error('not through the API'));

test('--quiet silences routine lines, never a crash report', async () => {
  const out = await stderrOf(async () => {
    const c = await Control.open<FakeMachine>({ quiet: true }, noStart);
    c.log('booting');
    c.debug('detail');
    c.error('vCPU 0: KVM_EXIT_SHUTDOWN (triple fault)');
    await c.close();
  });
  assert.is(out, 'tsvmm: vCPU 0: KVM_EXIT_SHUTDOWN (triple fault)\n');
});

test('without --quiet both reach stderr; a guest-made line stays one line', async () => {
  const out = await stderrOf(async () => {
    const c = await Control.open<FakeMachine>({}, noStart);
    c.log('booting');
    c.error('crash\ntsvmm: forged');
    await c.close();
  });
  assert.is(out, 'tsvmm: booting\ntsvmm: crash\\ntsvmm: forged\n');
});

test('with --log-path the crash report is written at level error, whatever the level filters', async () => {
  const path = join(tmp(), 'vmm.log');
  const out = await stderrOf(async () => {
    const c = await Control.open<FakeMachine>({ 'log-path': path, 'log-level': 'error', quiet: true }, noStart);
    c.log('booting');
    c.error('vCPU 1: crashed');
    await c.close();
  });
  assert.is(out, '');
  const lines = readFileSync(path, 'utf8').trim().split('\n');
  assert.is(lines.length, 1, lines.join('\n'));
  assert.match(lines[0], /ERROR/i);
  assert.match(lines[0], /vCPU 1: crashed/);
});

test.run();
