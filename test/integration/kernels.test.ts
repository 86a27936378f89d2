// Any kernel with exec and demo (vmm/kernel/): Debian's 6.12 cloud kernel, a second flavour
// fetched beside the default one (tools/guest/fetch-kernel.sh --package; tools/setup.sh does it),
// with its modules from --modules: exec's `uname -r` is its release, and the demo runs on it.
// A configuration without vsock is refused before any boot, in words; a kernel whose
// configuration cannot be found and whose drivers are modules nobody gave boots, binds no vsock
// device, and exec says so instead of waiting for an agent that cannot come.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cacheDir } from '../../vmm/cache';
import { needs } from '../needs';
import { tsvmm } from './helpers';

const CLOUD_PACKAGE = /^linux-image-6\.12\..*-cloud-amd64-unsigned$/;
/**
 * The kernel's boot log stays off the console: it goes out through the emulated UART at a few
 * forwarded exits per byte (~130 bytes/s in a loaded nested sandbox), which made the demo's
 * boot outlast its 300 s once in CI. The init's own lines still print.
 */
const QUIET = ['--append', 'quiet'];

interface Record {
  package: string;
  version: string;
  kernel: string;
  modulesDir: string;
}

/** The fetched 6.12 cloud kernel's record, if tools/guest/fetch-kernel.sh --package fetched it. */
function cloudKernel(): Record | undefined {
  const dir = join(cacheDir(), 'kernel');
  if (!existsSync(dir)) return undefined;
  for (const e of readdirSync(dir)) {
    const f = join(dir, e, 'kernel.json');
    if (!existsSync(f)) continue;
    const r = JSON.parse(readFileSync(f, 'utf8')) as Record;
    if (CLOUD_PACKAGE.test(r.package) && existsSync(r.kernel) && existsSync(join(r.modulesDir, 'modules.dep'))) return r;
  }
  return undefined;
}

const k = cloudKernel();
const it = needs(k ? undefined : "needs Debian's 6.12 cloud kernel: tools/guest/fetch-kernel.sh --package 'linux-image-6.12.*-cloud-amd64-unsigned' (tools/setup.sh runs it)");
const scratch = mkdtempSync(join(tmpdir(), 'tsvmm-kernels-'));
test.after(() => rmSync(scratch, { recursive: true, force: true }));

it('exec on the 6.12 cloud kernel with its modules: uname -r is the release the image states', async () => {
  const r = await tsvmm(['exec', '--kernel', k!.kernel, '--modules', k!.modulesDir, ...QUIET, '--', 'uname', '-r']);
  assert.is(r.code, 0, r.stderr);
  assert.is(r.stdout, `${k!.version}\n`);
  assert.match(r.stderr, `tsvmm: kernel ${k!.version}: ${k!.kernel}`);
});

it('tsvmm demo on the 6.12 cloud kernel: the affinity program loads and the host pins vCPU 1', async () => {
  const r = await tsvmm(['demo', '--kernel', k!.kernel, '--modules', k!.modulesDir, ...QUIET]);
  assert.is(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /injected eBPF package 'affinity' into the guest: prog ids \d+/);
  assert.match(r.stdout, /during: the guest pinned a task to vCPU 1/);
  assert.match(r.stdout, /after: the task exited, vCPU 1 floats again/);
});

it('a configuration without vsock is refused before booting, naming the option and what needs it', async () => {
  // The same image, with a config-<release> beside it (Debian's layout) that lacks vsock.
  const dir = join(scratch, 'novsock');
  const image = join(dir, `vmlinuz-${k!.version}`);
  mkdirSync(dir);
  symlinkSync(k!.kernel, image);
  const config = readFileSync(join(k!.kernel, '..', `config-${k!.version}`), 'utf8')
    .replace(/^CONFIG_VIRTIO_VSOCKETS=.*$/m, '# CONFIG_VIRTIO_VSOCKETS is not set');
  writeFileSync(join(dir, `config-${k!.version}`), config);
  const r = await tsvmm(['exec', '--kernel', image, '--modules', k!.modulesDir, '--', 'true']);
  assert.is(r.code, 125, r.stderr);
  assert.match(r.stderr, `cannot run tsvmm exec (configuration from ${join(dir, `config-${k!.version}`)})`);
  assert.match(r.stderr, 'CONFIG_VIRTIO_VSOCKETS is not set in the kernel configuration: tsvmm exec needs it for the guest agent');
  assert.not.match(r.stderr, 'build-initramfs', 'refused before anything was built or booted');
});

it('no configuration and no modules: the guest boots, binds no vsock device, and exec says why', async () => {
  const dir = join(scratch, 'bare');
  mkdirSync(dir);
  const image = join(dir, 'bzImage');
  symlinkSync(k!.kernel, image);
  const r = await tsvmm(['exec', '--kernel', image, ...QUIET, '--', 'true']);
  assert.is(r.code, 125, r.stderr);
  assert.match(r.stderr, 'kernel configuration not found');
  assert.match(r.stderr, /did not bind the virtio-vsock device.*CONFIG_VIRTIO_VSOCKETS/);
});

test.run();
