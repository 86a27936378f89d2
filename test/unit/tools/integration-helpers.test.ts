// The integration tests' own machinery, on real sockets: StreamReader (exact reads that lose no
// byte, where vsock.test.ts's old reader lost the data that came in the header's chunk and hung
// its file) and bounded() (a test past its deadline fails naming what it awaited, and unwinds).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bounded } from '../../integration/deadline';
import { StreamReader } from '../../integration/helpers';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-helpers-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

/** A connected pair of Unix sockets: what the client writes, `server` reads. */
async function pair(name: string): Promise<{ client: Socket; server: Socket; listener: Server }> {
  const path = join(dir, name);
  let accepted: (s: Socket) => void = () => {};
  const got = new Promise<Socket>((r) => (accepted = r));
  const listener = createServer((s) => accepted(s));
  await new Promise<void>((r) => listener.listen(path, r));
  const client = createConnection(path);
  await new Promise((r) => client.once('connect', r));
  return { client, server: await got, listener };
}

test('StreamReader: a header and the data after it, arriving in one chunk, are read whole', bounded(10, async (d) => {
  const { client, server, listener } = await pair('one-chunk');
  try {
    const reader = new StreamReader(server);
    d.note(() => reader.describe());
    const bytes = Buffer.from(Array.from({ length: 72 + 4096 }, (_, i) => i & 0xff));
    client.write(bytes); // one write: the first read sees the header and the data together
    const hdr = await d.wait('the header', reader.read(72));
    // Whatever the event loop does between the two reads (timers, other sockets) loses nothing.
    await new Promise((r) => setTimeout(r, 20));
    const data = await d.wait('the data', reader.read(4096));
    assert.ok(hdr.equals(bytes.subarray(0, 72)));
    assert.ok(data.equals(bytes.subarray(72)));
  } finally {
    client.destroy();
    listener.close();
  }
}));

test('StreamReader: EOF before the bytes asked for rejects, saying how many came', bounded(10, async (d) => {
  const { client, server, listener } = await pair('eof');
  try {
    const reader = new StreamReader(server);
    client.end(Buffer.alloc(10));
    const err = await d.wait('the short read to fail', reader.read(11).then(() => undefined, (e: Error) => e));
    assert.ok(err, 'a short stream must reject');
    assert.match(err.message, /EOF after 10 of 11 bytes/);
    assert.match(reader.describe(), /10 bytes received/);
  } finally {
    client.destroy();
    listener.close();
  }
}));

test('bounded: a body past its deadline fails naming its pending waits and notes, after its finally ran', async () => {
  let cleaned = false;
  let aborted = false;
  const body = bounded(0.2, async (d) => {
    d.signal.addEventListener('abort', () => (aborted = true));
    d.note(() => 'bytes so far: 7');
    await d.wait('a quick step', Promise.resolve());
    try {
      await d.wait('the guest to connect', new Promise(() => {}));
    } finally {
      cleaned = true;
    }
  }, { diagnose: async () => 'counters: {}' });
  try {
    await body();
    assert.unreachable('a body that never finishes must fail');
  } catch (e) {
    const m = (e as Error).message;
    assert.match(m, /did not finish within 0.2 s/);
    assert.match(m, /still waiting for: the guest to connect/);
    assert.not.match(m, /a quick step/);
    assert.match(m, /bytes so far: 7/);
    assert.match(m, /counters: \{\}/);
  }
  assert.ok(cleaned, "the body's finally ran");
  assert.ok(aborted, 'the signal was aborted');
});

test('bounded: a body that finishes or fails in time is left alone', async () => {
  await bounded(5, async (d) => {
    assert.is(await d.wait('a value', Promise.resolve(42)), 42);
  })();
  try {
    await bounded(5, async () => {
      throw new Error('its own failure');
    })();
    assert.unreachable('the failure must come through');
  } catch (e) {
    assert.is((e as Error).message, 'its own failure');
  }
});

test.run();
