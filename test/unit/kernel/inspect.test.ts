// What tsvmm reads from a guest kernel before booting it (vmm/kernel/): the release an image
// states, its configuration (build tree .config, config-<release> beside the image, IKCONFIG
// framed as kernel/configs.c frames it, in the image or in configs.ko), the verdict for a use,
// a build tree's modules depmod'ed, and the agent initramfs built for another kernel. Real
// inputs where they exist: the cached Debian kernel (fetched on first use, as the guest tests
// do), Debian's gzip/xz/depmod/cpio. No KVM.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { ensureDefaultGuest, ensureAgentImage, type DefaultGuest } from '../../../vmm/default-guest';
import { extractIkconfig, findKernelConfig, kernelModules, kernelRelease, locateKernel, KernelLookupError } from '../../../vmm/kernel/inspect';
import { checkKernelConfig, parseFeatureTable, parseKernelConfig, readFeatureTable } from '../../../vmm/kernel/requirements';
import { projectRoot } from '../../../vmm/default-guest';
import { makeBzImage, makeElf } from '../boot/images';

let guest: DefaultGuest;
const dirs: string[] = [];
const scratch = () => {
  const d = mkdtempSync(join(tmpdir(), 'tsvmm-kernel-'));
  dirs.push(d);
  return d;
};

test.before(async () => {
  guest = await ensureDefaultGuest();
});
test.after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A config wrapped as kernel/configs.c wraps it: "IKCFG_ST", the gzip'd text, "IKCFG_ED". */
function ikconfigBlob(text: string): Buffer {
  const gz = execFileSync('gzip', ['-9n'], { input: text });
  return Buffer.concat([Buffer.from('IKCFG_ST'), gz, Buffer.from('IKCFG_ED')]);
}

test('the release a bzImage and an ELF vmlinux state (Debian kernel, both forms)', () => {
  assert.is(kernelRelease(guest.kernel)?.release, guest.version);
  assert.match(kernelRelease(guest.kernel)!.banner, /debian-kernel/);
  assert.ok(guest.vmlinux);
  assert.is(kernelRelease(guest.vmlinux!)?.release, guest.version);
});

test('the release of synthetic images: header pointer, banner after a format string, none', () => {
  const d = scratch();
  const bz = makeBzImage({ kernelLength: 0x3000 });
  const at = 0x1200; // kernel_version is an offset from 0x200
  Buffer.from(bz.buffer).writeUInt16LE(at - 0x200, 0x20e);
  Buffer.from(bz.buffer).write('6.99.1-test (me@host) #1 SMP\0', at, 'latin1');
  writeFileSync(join(d, 'bzImage'), bz);
  assert.equal(kernelRelease(join(d, 'bzImage')), { release: '6.99.1-test', banner: '6.99.1-test (me@host) #1 SMP' });
  const elf = Buffer.concat([Buffer.from(makeElf()), Buffer.from('Linux version %s\0...Linux version 6.98.0-x (gcc) #2\0')]);
  writeFileSync(join(d, 'vmlinux'), elf);
  assert.is(kernelRelease(join(d, 'vmlinux'))?.release, '6.98.0-x');
  writeFileSync(join(d, 'plain'), makeElf());
  assert.is(kernelRelease(join(d, 'plain')), undefined);
});

test('IKCONFIG between its markers, as configs.c puts it; the markers as mere text are skipped', () => {
  const text = 'CONFIG_VSOCKETS=m\n# CONFIG_KPROBES is not set\nCONFIG_HZ=250\n';
  const blob = Buffer.concat([Buffer.from('xx IKCFG_ST but no gzip here '), Buffer.alloc(100), ikconfigBlob(text), Buffer.alloc(64)]);
  assert.is(extractIkconfig(blob), text);
  assert.is(extractIkconfig(Buffer.from('nothing in here')), undefined);
  const cfg = parseKernelConfig(text);
  assert.equal([...cfg], [['CONFIG_VSOCKETS', 'm'], ['CONFIG_HZ', '250']]);
});

test('the config is found: build tree .config, config-<release> beside the image, IKCONFIG in the image or in configs.ko', () => {
  const d = scratch();
  // Debian's layout: config-<release> beside vmlinuz-<release>.
  assert.is(findKernelConfig({ image: guest.kernel }, guest.version)?.source, join(dirname(guest.kernel), `config-${guest.version}`));
  // A build tree.
  const tree = join(d, 'linux');
  mkdirSync(join(tree, 'arch/x86/boot'), { recursive: true });
  copyFileSync(guest.kernel, join(tree, 'arch/x86/boot/bzImage'));
  writeFileSync(join(tree, '.config'), 'CONFIG_ACPI=y\n');
  const k = locateKernel(tree);
  assert.equal(k, { image: join(tree, 'arch/x86/boot/bzImage'), tree });
  assert.equal(findKernelConfig(k, guest.version), { source: join(tree, '.config'), options: new Map([['CONFIG_ACPI', 'y']]) });
  // IKCONFIG=y in an ELF image.
  writeFileSync(join(d, 'vmlinux'), Buffer.concat([Buffer.from(makeElf()), ikconfigBlob('CONFIG_IKCONFIG=y\nCONFIG_VSOCKETS=y\n')]));
  const ik = findKernelConfig({ image: join(d, 'vmlinux') }, '6.99.0');
  assert.is(ik?.source, `IKCONFIG in ${join(d, 'vmlinux')}`);
  assert.is(ik?.options.get('CONFIG_VSOCKETS'), 'y');
  // IKCONFIG=m: configs.ko, xz-compressed as Debian ships modules.
  const mods = join(d, 'lib/modules/6.99.0');
  mkdirSync(join(mods, 'kernel/kernel'), { recursive: true });
  writeFileSync(join(mods, 'kernel/kernel/configs.ko.xz'), execFileSync('xz', ['-c'], { input: ikconfigBlob('CONFIG_IKCONFIG=m\n') }));
  writeFileSync(join(d, 'bare'), makeElf());
  assert.is(findKernelConfig({ image: join(d, 'bare') }, '6.99.0', mods)?.options.get('CONFIG_IKCONFIG'), 'm');
  assert.is(findKernelConfig({ image: join(d, 'bare') }, '6.99.0'), undefined);
});

test('the verdict names what is missing and what it breaks', () => {
  const features = readFeatureTable(projectRoot());
  const debian = findKernelConfig({ image: guest.kernel }, guest.version)!.options;
  const modules = kernelModules({ modules: guest.modulesDir, release: guest.version })!;
  assert.equal(checkKernelConfig(debian, features, 'exec', { acpi: true, modules }), { fatal: [], warnings: [] });
  // Without its modules, the stock kernel cannot run exec: virtio_mmio and vsock are modules.
  const bare = checkKernelConfig(debian, features, 'exec', { acpi: true });
  assert.ok(bare.fatal.some((l) => /CONFIG_VIRTIO_VSOCKETS=m.*no --modules DIR.*tsvmm exec needs it for the guest agent/.test(l)), bare.fatal.join('\n'));
  // With an initramfs of the user's own, the modules are its business: nothing to refuse.
  assert.equal(checkKernelConfig(debian, features, 'exec', { acpi: true, ownInitrd: true }), { fatal: [], warnings: [] });
  // A kernel without vsock at all.
  const novsock = new Map(debian);
  novsock.delete('CONFIG_VIRTIO_VSOCKETS');
  const v = checkKernelConfig(novsock, features, 'exec', { acpi: true, modules });
  assert.equal(v.fatal, ['CONFIG_VIRTIO_VSOCKETS is not set in the kernel configuration: tsvmm exec needs it for the guest agent, reached over virtio-vsock (exec, put, get)']);
  // `run` only warns; `demo` also needs bpf.
  assert.equal(checkKernelConfig(novsock, features, 'run', { acpi: true, modules }).fatal, []);
  const nobpf = new Map(debian);
  nobpf.delete('CONFIG_BPF_SYSCALL');
  assert.match(checkKernelConfig(nobpf, features, 'demo', { acpi: true, modules }).fatal.join('\n'), /CONFIG_BPF_SYSCALL is not set.*tsvmm demo needs it for the eBPF hint programs/);
  assert.match(checkKernelConfig(nobpf, features, 'exec', { acpi: true, modules }).warnings.join('\n'), /CONFIG_BPF_SYSCALL is not set in the kernel configuration: the eBPF hint programs .* will not work/);
  // --no-acpi needs the command-line devices, which Debian's kernel does not have.
  assert.match(checkKernelConfig(debian, features, 'exec', { acpi: false, modules }).fatal.join('\n'), /CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES is not set/);
  assert.throws(() => parseFeatureTable('vsock\n'), /malformed/);
});

test('a build tree\'s modules (modules.order with .o names) are depmod\'ed into a usable tree', () => {
  const d = scratch();
  const tree = join(d, 'linux');
  mkdirSync(tree);
  symlinkSync(guest.vmlinux!, join(tree, 'vmlinux'));
  // Three real modules of the Debian kernel where a build leaves them.
  const order: string[] = [];
  for (const line of readFileSync(join(guest.modulesDir, 'modules.order'), 'utf8').split('\n')) {
    if (!/\/(vsock|vmw_vsock_virtio_transport_common|vmw_vsock_virtio_transport)\.ko$/.test(line)) continue;
    const rel = line.replace(/^kernel\//, '');
    mkdirSync(join(tree, rel, '..'), { recursive: true });
    copyFileSync(join(guest.modulesDir, line), join(tree, rel));
    order.push(rel.replace(/\.ko$/, '.o'));
  }
  assert.is(order.length, 3);
  writeFileSync(join(tree, 'modules.order'), order.join('\n') + '\n');
  const k = locateKernel(tree);
  assert.is(k.image, join(tree, 'vmlinux'));
  const mods = kernelModules({ tree, release: guest.version })!;
  assert.ok(mods.dir.endsWith(`lib/modules/${guest.version}`));
  assert.ok(mods.names.has('vmw_vsock_virtio_transport') && mods.names.has('vsock'));
  const deps = execFileSync('modprobe', ['-d', mods.dir.replace(`/lib/modules/${guest.version}`, ''), '-S', guest.version, '--show-depends', 'vmw_vsock_virtio_transport'], { encoding: 'utf8' });
  assert.match(deps, /vsock\.ko[\s\S]*vmw_vsock_virtio_transport_common\.ko[\s\S]*vmw_vsock_virtio_transport\.ko/);
  // Another release's modules are refused before anything boots.
  assert.throws(() => kernelModules({ modules: guest.modulesDir, release: '6.99.0' }), (e: unknown) => e instanceof KernelLookupError && /holds modules for/.test((e as Error).message));
  assert.throws(() => locateKernel(d), /without a built kernel/);
});

test('the agent initramfs for another kernel: its modules when given, none when built in', async () => {
  const withMods = await ensureAgentImage(guest.version, guest.modulesDir);
  const list = (img: string) => execFileSync('cpio', ['-t', '--quiet'], { input: execFileSync('gzip', ['-dc', img], { maxBuffer: 1 << 30 }), encoding: 'utf8' }).split('\n');
  assert.ok(list(withMods).includes('lib/modules/06-vmw_vsock_virtio_transport.ko'));
  assert.ok(list(withMods).includes('usr/bin/tsvmm-agent'));
  const none = await ensureAgentImage('6.99.0-builtin', undefined);
  assert.match(none, /default-6\.99\.0-builtin-[0-9a-f]{16}\.cpio\.gz$/);
  assert.equal(list(none).filter((f) => f.endsWith('.ko')), []);
  assert.ok(list(none).includes('usr/bin/tsvmm-agent') && list(none).includes('init'));
});

test.run();
