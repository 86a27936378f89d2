// The default guest's build (tools/guest/build-initramfs.sh) and the host side of its init
// contract (vmm/default-guest.ts). Needs the Debian kernel package (fetched and cached on
// first use), busybox-static and cpio; no KVM.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  DefaultGuestError,
  encodeGuestCommand,
  ensureDefaultGuest,
  parseInitMarker,
  projectRoot,
} from '../../../vmm/default-guest';

const root = projectRoot();
const script = (name: string) => join(root, 'tools/guest', name);
const run = (file: string, args: string[], env: NodeJS.ProcessEnv = process.env) =>
  execFileSync(file, args, { encoding: 'utf8', env, stdio: ['ignore', 'pipe', 'pipe'] }).trim().split('\n').pop() ?? '';

/** Paths in the archive, in archive order (cpio -t on the gunzipped image). */
function listImage(image: string): string[] {
  const cpio = execFileSync('gzip', ['-dc', image], { maxBuffer: 1 << 30 });
  return execFileSync('cpio', ['-t', '--quiet'], { input: cpio, encoding: 'utf8' }).trim().split('\n');
}

/** One file's content from the image. */
function extract(image: string, path: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-cpio-'));
  try {
    const cpio = execFileSync('gzip', ['-dc', image], { maxBuffer: 1 << 30 });
    execFileSync('cpio', ['-id', '--quiet', path], { input: cpio, cwd: dir });
    return readFileSync(join(dir, path), 'utf8');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('fetch-kernel records a kernel and its depmod-ed modules', () => {
  const record = JSON.parse(readFileSync(run(script('fetch-kernel.sh'), []), 'utf8')) as Record<string, string>;
  assert.match(record.version!, /^\d+\.\d+\.\d+-\d+-amd64$/);
  assert.ok(record.kernel!.endsWith(`vmlinuz-${record.version}`));
  // A bzImage: "HdrS" at 0x202.
  assert.is(readFileSync(record.kernel!).subarray(0x202, 0x206).toString('latin1'), 'HdrS');
  assert.ok(readFileSync(join(record.modulesDir!, 'modules.dep'), 'utf8').includes('vsock.ko'));
});

test('the default initramfs holds /init, busybox and the device modules in load order', () => {
  const image = run(script('build-initramfs.sh'), ['--no-guest', '--name', 'unit-test']);
  const files = listImage(image);
  assert.ok(files.includes('init'));
  assert.ok(files.includes('bin/busybox'));
  assert.ok(files.includes('bin/sh'), 'applet links');
  assert.ok(files.includes('sbin/poweroff'), 'applet links');
  const mods = files.filter((f) => f.startsWith('lib/modules/') && f.endsWith('.ko'));
  assert.equal(mods, [
    'lib/modules/01-virtio_ring.ko',
    'lib/modules/02-virtio.ko',
    'lib/modules/03-virtio_mmio.ko',
    'lib/modules/04-vsock.ko',
    'lib/modules/05-vmw_vsock_virtio_transport_common.ko',
    'lib/modules/06-vmw_vsock_virtio_transport.ko',
    'lib/modules/07-pvpanic.ko',
    'lib/modules/08-pvpanic-mmio.ko',
    'lib/modules/09-virtio_blk.ko',
    'lib/modules/10-crc32c-intel.ko',
    'lib/modules/11-crc32c_generic.ko',
    'lib/modules/12-jbd2.ko',
    'lib/modules/13-mbcache.ko',
    'lib/modules/14-crc16.ko',
    'lib/modules/15-ext4.ko',
    'lib/modules/16-virtio-rng.ko',
    'lib/modules/17-fuse.ko',
    'lib/modules/18-virtiofs.ko',
    'lib/modules/19-overlay.ko',
  ]);
  // Which feature brought each module in: init loads a device's modules only when it is there.
  const features = extract(image, 'lib/modules/features');
  assert.match(features, /^01-virtio_ring\.ko devices$/m);
  assert.match(features, /^12-jbd2\.ko ext4$/m);
  assert.match(features, /^16-virtio-rng\.ko rng$/m);
  assert.is(features.trim().split('\n').length, mods.length);
  assert.is(extract(image, 'init'), readFileSync(script('init.sh'), 'utf8'));
});

test('the initramfs is cached and rebuilt when the init changes', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-init-'));
  try {
    const init = join(dir, 'init.sh');
    writeFileSync(init, '#!/bin/sh\necho one\n');
    const args = ['--no-guest', '--name', 'unit-rebuild', '--init', init, '--modules', 'vsock'];
    const first = run(script('build-initramfs.sh'), args);
    const built = statSync(first).mtimeMs;
    const again = execFileSync(script('build-initramfs.sh'), args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    assert.is(again.trim(), first);
    assert.is(statSync(first).mtimeMs, built, 'unchanged inputs keep the image');
    writeFileSync(init, '#!/bin/sh\necho two\n');
    const second = run(script('build-initramfs.sh'), args);
    assert.is.not(second, first, 'changed inputs give a new image under a new name');
    assert.ok(existsSync(first), 'the old image stays for whoever still uses it');
    assert.is(extract(first, 'init'), '#!/bin/sh\necho one\n');
    assert.is(extract(second, 'init'), '#!/bin/sh\necho two\n');
    assert.equal(listImage(second).filter((f) => f.endsWith('.ko')), ['lib/modules/01-vsock.ko']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a module that does not exist is a warning, not a failure', () => {
  const out = execFileSync(
    script('build-initramfs.sh'),
    ['--no-guest', '--name', 'unit-missing', '--modules', 'vsock no_such_module_xyz'],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] },
  );
  assert.equal(listImage(out.trim()).filter((f) => f.endsWith('.ko')), ['lib/modules/01-vsock.ko']);
});

test('ensureDefaultGuest returns the kernel, its ELF twin and an initramfs with guest/build', async () => {
  const logs: string[] = [];
  const g = await ensureDefaultGuest((m) => logs.push(m));
  assert.ok(g.kernel.endsWith(`vmlinuz-${g.version}`));
  assert.ok(g.modulesDir.endsWith(`lib/modules/${g.version}`));
  assert.ok(g.vmlinux !== null, 'vmlinux unpacked');
  assert.is(readFileSync(g.vmlinux!).subarray(0, 4).toString('latin1'), '\x7fELF');
  const files = listImage(g.initrd);
  assert.ok(files.includes('init') && files.includes('lib/modules/08-pvpanic-mmio.ko'));
  const build = join(root, 'guest/build');
  if (existsSync(build)) {
    for (const f of readdirSync(build)) assert.ok(files.includes(`usr/bin/${f}`), `guest/build/${f} in /usr/bin`);
  }
});

test('encodeGuestCommand round-trips through the guest\'s base64 decoder', () => {
  const cmds = [
    'echo hello',
    `printf '%s\\n' "a b" 'c'; exit 3`,
    'cat <<EOF\nline 1\n  line 2 ä €\nEOF',
    '/usr/bin/spscq --iters=1000000 && echo ok || echo "failed: $?"',
  ];
  for (const cmd of cmds) {
    const fragment = encodeGuestCommand(cmd);
    assert.match(fragment, /^tsvmm\.cmd=[A-Za-z0-9+/=]+$/, 'one kernel parameter, no spaces or quotes');
    const enc = fragment.slice('tsvmm.cmd='.length);
    // The init decodes with `echo "$enc" | base64 -d` (busybox).
    const decoded = execFileSync('busybox', ['base64', '-d'], { input: `${enc}\n`, encoding: 'utf8' });
    assert.is(decoded, cmd);
  }
});

test('encodeGuestCommand refuses what the kernel command line cannot hold', () => {
  assert.throws(() => encodeGuestCommand('x'.repeat(2000)), (e: unknown) => e instanceof DefaultGuestError);
});

test('parseInitMarker reads the init\'s marker lines', () => {
  assert.equal(parseInitMarker('tsvmm-init: ready\r'), { kind: 'ready' });
  assert.equal(parseInitMarker('tsvmm-init: cpus=2 mem_kb=491520'), { kind: 'info', cpus: 2, memKb: 491520 });
  assert.equal(parseInitMarker('tsvmm-init: exit=3'), { kind: 'exit', status: 3 });
  assert.is(parseInitMarker('[    0.1] tsvmm-init: ready later'), null);
  assert.is(parseInitMarker('tsvmm-init: exit=x'), null);
});

test.run();
