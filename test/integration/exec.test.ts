// `tsvmm exec` against the stock kernel: exit codes, stderr kept apart from stdout, --put,
// --timeout, and 127 when the command does not exist.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tsvmm } from './helpers';

test('exit status, stdout and stderr are the command\'s', async () => {
  const r = await tsvmm(['exec', '--', 'sh', '-c', 'echo to-out; echo to-err >&2; exit 7']);
  assert.is(r.code, 7, r.stderr);
  assert.is(r.stdout, 'to-out\n');
  assert.match(r.stderr, 'to-err\n');
  assert.not.match(r.stdout, 'to-err');
});

test('--put copies a file in before the command runs', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-put-'));
  const src = join(dir, 'hello.sh');
  writeFileSync(src, 'echo "put works: $1"\n');
  const r = await tsvmm(['exec', '--put', `${src}:/root/hello.sh`, '--', 'sh', '/root/hello.sh', 'yes']);
  assert.is(r.code, 0, r.stderr);
  assert.is(r.stdout, 'put works: yes\n');
});

test('a signal ends the command: 128 + signo; --timeout gives 124', async () => {
  const killed = await tsvmm(['exec', '--', 'sh', '-c', 'kill -9 $$']);
  assert.is(killed.code, 137, killed.stderr);
  const slow = await tsvmm(['exec', '--timeout', '60', '--', 'sleep', '600']);
  assert.is(slow.code, 124, slow.stderr);
});

test('a missing command exits 127 (as in a shell or docker) and says why, without a hang', async () => {
  const r = await tsvmm(['exec', '--', '/no/such/program']);
  assert.is(r.code, 127, r.stderr);
  assert.match(r.stderr, 'exec /no/such/program: No such file or directory');
  assert.is(r.stdout, '');
});

test.run();
