// --drive as a user writes it (devices/virtio/block/spec.ts): the parts, defaults, the checks
// every door shares, and the root drive going first (it must be /dev/vda).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { orderDrives, parseDriveSpec, validateDriveSpec } from '../../../devices/virtio/block/spec';

test('path, ro, id, root; drives without id are named by position', () => {
  assert.equal(parseDriveSpec('path=/img/a.raw', 0), { id: 'drive0', path: '/img/a.raw', readOnly: false, root: false });
  assert.equal(parseDriveSpec('path=b.img,ro,id=data_1', 3), { id: 'data_1', path: 'b.img', readOnly: true, root: false });
  assert.equal(parseDriveSpec('root,path=r.img', 1), { id: 'drive1', path: 'r.img', readOnly: false, root: true });
});

test('bad specs are usage errors naming the problem', () => {
  const bad: [string, RegExp][] = [
    ['file=x', /unknown part "file=x"/],
    ['ro', /missing path=IMG/],
    ['path=a,path=b', /"path" given twice/],
    ['path=a,ro,ro', /"ro" given twice/],
    ['path=a,ro=1', /unknown part "ro=1"/],
    ['path=', /path is empty/],
    ['path=a,id=has space', /id 'has space'/],
    ['path=a,id=abcdefghijklmnopqrstu', /1-20 characters/],
  ];
  for (const [spec, re] of bad) {
    try {
      parseDriveSpec(spec, 0);
      assert.unreachable(spec);
    } catch (e) {
      assert.is((e as Error).name, 'DriveSpecError', spec);
      assert.match((e as Error).message, re, spec);
    }
  }
  assert.throws(() => validateDriveSpec({ id: '', path: 'x', readOnly: false, root: false }), /id ''/);
});

test('the root drive goes first; ids unique; one root at most', () => {
  const a = parseDriveSpec('path=a', 0);
  const r = parseDriveSpec('path=r,root', 1);
  assert.equal(orderDrives([a, r]).map((d) => d.id), ['drive1', 'drive0']);
  assert.throws(() => orderDrives([a, { ...a }]), /id 'drive0' given twice/);
  assert.throws(() => orderDrives([r, { ...r, id: 'x' }]), /both root devices/);
});

test.run();
