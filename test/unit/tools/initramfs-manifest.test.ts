// The initramfs cache's fast path: tools/guest/build-initramfs.sh leaves a manifest of its
// inputs beside the image, and vmm/default-guest.ts's buildInitramfs returns the image from it
// with stat() calls alone, or runs the script when anything changed. Each kind of change is made
// for real in a private copy of the checkout (tools/guest, guest/build), a private busybox
// (TSVMM_BUSYBOX, a stand-in) and a private module tree built from the cached Debian kernel's vsock.ko.
// Needs the cached Debian kernel (fetched on first use), cpio and kmod; no KVM.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import {
  appendFileSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, unlinkSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildInitramfs, checkManifest, manifestName, projectRoot } from '../../../vmm/default-guest';

const KVER = '9.9.9-unit-manifest';
const real = projectRoot();
let dir = '';
let root = '';
let moddir = '';
let busybox = '';
let args: string[] = [];
const saved = { TSVMM_CACHE: process.env.TSVMM_CACHE, TMPDIR: process.env.TMPDIR, TSVMM_BUSYBOX: process.env.TSVMM_BUSYBOX };

/** Paths in the image. */
function listImage(image: string): string[] {
  const cpio = execFileSync('gzip', ['-dc', image], { maxBuffer: 1 << 30 });
  return execFileSync('cpio', ['-t', '--quiet'], { input: cpio, encoding: 'utf8' }).trim().split('\n');
}

/** One file of the image. */
function extract(image: string, path: string): Buffer {
  const out = mkdtempSync(join(dir, 'cpio-'));
  const cpio = execFileSync('gzip', ['-dc', image], { maxBuffer: 1 << 30 });
  execFileSync('cpio', ['-id', '--quiet', path], { input: cpio, cwd: out });
  return readFileSync(join(out, path));
}

const build = () => buildInitramfs(root, args, () => {});

/** The script leaves no manifest for inputs changed in its last 20 ms; a real edit is older. */
const settle = () => new Promise((r) => setTimeout(r, 50));

/** A change, then: the script runs (not cached), and the call after that is a hit again. */
async function expectRebuild(what: string, change: () => void): Promise<string> {
  const before = await build();
  assert.ok(before.cached, `${what}: a hit before the change`);
  change();
  await settle();
  const after = await build();
  assert.not.ok(after.cached, `${what}: the script ran`);
  await settle();
  const again = await build();
  assert.ok(again.cached, `${what}: a hit again after the script`);
  assert.is(again.image, after.image);
  return after.image;
}

test.before(async () => {
  // The cached Debian kernel's record, from the real cache (before TSVMM_CACHE points elsewhere).
  const record = JSON.parse(readFileSync(execFileSync(join(real, 'tools/guest/fetch-kernel.sh'), { encoding: 'utf8' }).trim(), 'utf8')) as { modulesDir: string };
  dir = mkdtempSync(join(tmpdir(), 'tsvmm-manifest-'));
  process.env.TSVMM_CACHE = join(dir, 'cache');
  process.env.TMPDIR = join(dir, 'tmp');
  mkdirSync(process.env.TMPDIR);
  // A checkout of its own: the scripts, and a guest/build without a Makefile (used as it is).
  root = join(dir, 'checkout');
  mkdirSync(join(root, 'tools/guest'), { recursive: true });
  for (const f of ['build-initramfs.sh', 'need.sh', 'modules.txt', 'init.sh']) copyFileSync(join(real, 'tools/guest', f), join(root, 'tools/guest', f));
  execFileSync('chmod', ['+x', join(root, 'tools/guest/build-initramfs.sh')]);
  mkdirSync(join(root, 'guest/build'), { recursive: true });
  writeFileSync(join(root, 'guest/build/tsvmm-agent'), 'agent v1\n');
  // A busybox of its own: a stand-in that lists one applet (no dynamic libraries, as the script
  // requires), which keeps each of the many builds here small.
  busybox = join(dir, 'busybox');
  writeFileSync(busybox, '#!/bin/sh\n# busybox stand-in\necho bin/sh\n', { mode: 0o755 });
  process.env.TSVMM_BUSYBOX = busybox;
  // A module tree of its own (not under lib/modules/<kver>: the script sees it through a link).
  moddir = join(dir, 'mods');
  mkdirSync(join(moddir, 'kernel'), { recursive: true });
  copyFileSync(join(record.modulesDir, 'kernel/net/vmw_vsock/vsock.ko'), join(moddir, 'kernel/vsock.ko'));
  mkdirSync(join(dir, 'depmod/lib/modules'), { recursive: true });
  symlinkSync(moddir, join(dir, 'depmod/lib/modules', KVER));
  execFileSync('depmod', ['-b', join(dir, 'depmod'), KVER], { stdio: 'ignore' });
  args = ['--name', 'unit-manifest', '--modules', 'vsock', '--kver', KVER, '--moddir', moddir];
  await settle();
});

test.after(() => {
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  rmSync(dir, { recursive: true, force: true });
});

test('the first call runs the script and leaves a manifest; the next one is a hit without it', async () => {
  const first = await build();
  assert.not.ok(first.cached);
  const files = listImage(first.image);
  assert.ok(files.includes('usr/bin/tsvmm-agent') && files.includes('lib/modules/01-vsock.ko') && files.includes('bin/busybox') && files.includes('bin/sh'));
  const manifest = join(dir, 'cache/initramfs', manifestName(root, args));
  const text = readFileSync(manifest, 'utf8');
  for (const input of [join(root, 'tools/guest/build-initramfs.sh'), join(root, 'tools/guest/init.sh'), busybox, join(moddir, 'kernel/vsock.ko'), join(moddir, 'modules.dep'), join(root, 'guest/build/tsvmm-agent')]) {
    assert.match(text, new RegExp(`^input \\d+ \\d+\\.\\d{9} \\d+\\.\\d{9} ${input.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'), `${input} recorded`);
  }
  assert.match(text, new RegExp(`^absent ${join(root, 'guest/Makefile')}$`, 'm'), 'a guest/Makefile that may appear');
  const hit = await build();
  assert.ok(hit.cached, 'nothing changed: the manifest answers');
  assert.is(hit.image, first.image);
  // Other arguments are another manifest.
  assert.is.not(manifestName(root, [...args, '--no-guest']), manifestName(root, args));
});

test('a changed agent binary (same size) rebuilds with the new binary', async () => {
  const image = await expectRebuild('agent', () => writeFileSync(join(root, 'guest/build/tsvmm-agent'), 'agent v2\n'));
  assert.is(extract(image, 'usr/bin/tsvmm-agent').toString(), 'agent v2\n');
});

test('a new file in guest/build rebuilds with it', async () => {
  const image = await expectRebuild('new guest file', () => writeFileSync(join(root, 'guest/build/extra'), 'x\n'));
  assert.ok(listImage(image).includes('usr/bin/extra'));
});

test('a changed busybox rebuilds with it', async () => {
  const image = await expectRebuild('busybox', () => appendFileSync(busybox, Buffer.from([0])));
  assert.equal(extract(image, 'bin/busybox'), readFileSync(busybox));
});

test('another TSVMM_BUSYBOX rebuilds', async () => {
  const other = join(dir, 'busybox2');
  writeFileSync(other, '#!/bin/sh\n# another stand-in\necho bin/sh\n', { mode: 0o755 });
  const image = await expectRebuild('TSVMM_BUSYBOX', () => (process.env.TSVMM_BUSYBOX = other));
  assert.equal(extract(image, 'bin/busybox'), readFileSync(other));
  process.env.TSVMM_BUSYBOX = busybox;
  assert.not.ok((await build()).cached, 'and back');
  await settle();
});

test('a changed module rebuilds with it', async () => {
  const ko = join(moddir, 'kernel/vsock.ko');
  const image = await expectRebuild('module', () => appendFileSync(ko, Buffer.from('tail')));
  assert.equal(extract(image, 'lib/modules/01-vsock.ko'), readFileSync(ko));
});

test('a re-run depmod (the module index) makes the script check again', async () => {
  await expectRebuild('depmod', () => execFileSync('depmod', ['-b', join(dir, 'depmod'), KVER], { stdio: 'ignore' }));
});

test('a changed script or init rebuilds', async () => {
  const a = await expectRebuild('script', () => appendFileSync(join(root, 'tools/guest/build-initramfs.sh'), '# changed\n'));
  const init = join(root, 'tools/guest/init.sh');
  const b = await expectRebuild('init', () => appendFileSync(init, '# changed\n'));
  assert.is.not(a, b);
  assert.equal(extract(b, 'init'), readFileSync(init));
});

test('a deleted image is built again', async () => {
  const image = await expectRebuild('image deleted', () => unlinkSync(checkManifestImage()));
  assert.ok(existsSync(image));
});

test('a guest/Makefile that appears makes the script check again', async () => {
  // An empty Makefile: `make -q` says there is nothing to do and guest/build is used as it is.
  await expectRebuild('Makefile', () => writeFileSync(join(root, 'guest/Makefile'), 'all:\n\t@:\n'));
});

test('checkManifest refuses what it does not understand', () => {
  const bad = join(dir, 'bad-manifest');
  writeFileSync(bad, 'something else\n');
  assert.ok('miss' in checkManifest(bad));
  writeFileSync(bad, 'tsvmm-initramfs-manifest 1\nenv TSVMM_BUSYBOX=\n');
  assert.ok('miss' in checkManifest(bad), 'no image');
  assert.ok('miss' in checkManifest(join(dir, 'no-such-manifest')));
});

/** The image the current manifest names. */
function checkManifestImage(): string {
  const r = checkManifest(join(dir, 'cache/initramfs', manifestName(root, args)));
  if (!('image' in r)) throw new Error(`no valid manifest: ${r.miss}`);
  return r.image;
}

test.run();
