import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseVsockSpec, VsockSpecError } from '../../../devices/virtio/vsock/spec';

let dir = '';
test.before(() => { dir = mkdtempSync(join(tmpdir(), 'tsvmm-vsock-spec-')); });
test.after(() => { rmSync(dir, { recursive: true, force: true }); });

function fails(spec: string, re: RegExp): void {
  try {
    parseVsockSpec(spec);
    assert.unreachable(`"${spec}" must be rejected`);
  } catch (e) {
    assert.instance(e, VsockSpecError);
    assert.match((e as Error).message, re);
  }
}

test('accepts cid=N,uds=PATH in any order', () => {
  const p = join(dir, 'v.sock');
  assert.equal(parseVsockSpec(`cid=3,uds=${p}`), { cid: 3, udsPath: p });
  assert.equal(parseVsockSpec(`uds=${p},cid=4294967294`), { cid: 4294967294, udsPath: p });
});

test('CID must be 3..2^32-2, decimal', () => {
  const p = join(dir, 'v.sock');
  fails(`cid=2,uds=${p}`, /3\.\.4294967294/);
  fails(`cid=0,uds=${p}`, /3\.\.4294967294/);
  fails(`cid=4294967295,uds=${p}`, /3\.\.4294967294/);
  fails(`cid=-5,uds=${p}`, /not a decimal/);
  fails(`cid=0x10,uds=${p}`, /not a decimal/);
  fails(`cid=,uds=${p}`, /not a decimal/);
});

test('missing, unknown, duplicate keys', () => {
  fails('cid=3', /missing uds/);
  fails(`uds=${join(dir, 'a')}`, /missing cid/);
  fails(`cid=3,uds=${join(dir, 'a')},mtu=5`, /unknown key "mtu"/);
  fails(`cid=3,cid=4,uds=${join(dir, 'a')}`, /given twice/);
  fails('cid=3,uds=', /missing uds/);
  fails('garbage', /key=value/);
});

test('path must fit sun_path with the _<port> suffix, in a writable directory, not a regular file', () => {
  fails(`cid=3,uds=/tmp/${'x'.repeat(100)}`, /bytes/);
  fails(`cid=3,uds=${join(dir, 'no-such-dir', 's')}`, /missing or not writable/);
  const file = join(dir, 'regular');
  writeFileSync(file, 'x');
  fails(`cid=3,uds=${file}`, /not a socket/);
  if (process.getuid?.() !== 0) {
    const ro = join(dir, 'ro');
    mkdirSync(ro);
    chmodSync(ro, 0o500);
    fails(`cid=3,uds=${join(ro, 's')}`, /not writable/);
  }
});

test.run();
