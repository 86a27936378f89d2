// --share and --rootfs host: parsing, the checks before boot, the init's command line words,
// and where the caller's directory appears in the guest (exec's default --cwd).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { guestPathOf, parseShare, sharesCmdline, sharesFromFlags, validateShares } from '../../../vmm/shares';

test('HOST:GUEST[,ro] split at the last colon; tags in order; --rootfs host last', () => {
  assert.equal(parseShare('/srv/a:b:/mnt/x,ro', 0), { hostDir: '/srv/a:b', guestDir: '/mnt/x', readOnly: true, tag: 'tsvmmfs0' });
  assert.equal(parseShare('/srv:/mnt/y/', 3), { hostDir: '/srv', guestDir: '/mnt/y', readOnly: false, tag: 'tsvmmfs3' });
  const s = sharesFromFlags(['/a:/x', '/b:/y,ro'], 'host');
  assert.equal(s.map((x) => x.tag), ['tsvmmfs0', 'tsvmmfs1', 'tsvmmfs2']);
  assert.equal(s[2], { hostDir: '/', guestDir: '/', readOnly: true, tag: 'tsvmmfs2', root: true });
  assert.is(sharesCmdline(s), 'tsvmm.share=tsvmmfs0:/x tsvmm.share=tsvmmfs1:/y:ro tsvmm.rootfs=tsvmmfs2');
});

test('bad specs are usage errors naming the flag', () => {
  for (const bad of ['/a', ':/x', '/a:', '/a:x', '/a:/', '/a:/x y', '/a:/x/../y', '/a:/x;rm']) assert.throws(() => parseShare(bad, 0), /--share/, bad);
  assert.throws(() => sharesFromFlags([], 'guest'), /--rootfs 'guest' must be 'host'/);
});

test('validation: the host directory must exist and be one; one share per guest directory', () => {
  assert.throws(() => validateShares([parseShare('/no/such/dir:/x', 0)]), /share \/no\/such\/dir: no such directory/);
  assert.throws(() => validateShares([parseShare('/etc/hostname:/x', 0)]), /not a directory/);
  assert.throws(() => validateShares([parseShare('/tmp:/x', 0), parseShare('/etc:/x', 1)]), /two shares mount at \/x/);
  validateShares(sharesFromFlags(['/tmp:/tmp/x'], 'host'));
});

test('with --rootfs host a share mounts inside the read-only host root: its guest directory exists there or is on a guest tmpfs', () => {
  validateShares(sharesFromFlags(['/tmp:/etc', '/tmp:/root/a/b', '/tmp:/tmp/x', '/tmp:/var/tmp/y', '/tmp:/run/z'], 'host'));
  assert.throws(() => validateShares(sharesFromFlags(['/tmp:/no/such/dir'], 'host')), /share \/tmp:\/no\/such\/dir: with --rootfs host the guest directory must exist on the host .* or lie under \/tmp, \/run, \/var\/tmp, \/root/);
  assert.throws(() => validateShares(sharesFromFlags(['/tmp:/etc/hostname'], 'host')), /must exist on the host/);
  validateShares(sharesFromFlags(['/tmp:/no/such/dir'], undefined));
});

test('guestPathOf: inside a share its guest path; through the root share the same path unless hidden', () => {
  const shares = sharesFromFlags(['/work/proj:/src'], undefined);
  assert.is(guestPathOf('/work/proj', shares), '/src');
  assert.is(guestPathOf('/work/proj/a/b', shares), '/src/a/b');
  assert.is(guestPathOf('/work/project', shares), undefined);
  const root = sharesFromFlags([], 'host');
  assert.is(guestPathOf('/work/wt', root), '/work/wt');
  assert.is(guestPathOf('/tmp/x', root), undefined);
  assert.is(guestPathOf('/root', root), undefined);
  assert.is(guestPathOf('/var/tmpfoo', root), '/var/tmpfoo');
});

test.run();
