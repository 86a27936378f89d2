// Boots Debian's stock kernel on real KVM through the CLI, as bzImage (unpacked by default, and
// through its own decompressor with --no-unpack) and as ELF vmlinux: SMP (up to 8 vCPUs),
// memory, console, and each way a guest can end (poweroff, reboot, triple fault, panic), plus a
// malformed image refused before any vCPU runs.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeGuestCommand, ensureDefaultGuest } from '../../vmm/default-guest';
import { runGuestCommand, tsvmm } from './helpers';

test.before(async () => {
  await ensureDefaultGuest();
});

for (const [vcpus, memory, memMiB, unpack] of [[1, '256M', 256, false], [2, '512M', 512, true], [8, '1G', 1024, true]] as const) {
  test(`${vcpus} vCPU(s), ${memory}, ${unpack ? 'unpacked' : '--no-unpack'}: the guest sees them and powers off with 0`, async () => {
    const r = await runGuestCommand('echo "nproc=$(nproc)"; grep -c ^processor /proc/cpuinfo | sed s/^/cpuinfo=/', ['--vcpus', String(vcpus), '--memory', memory, ...(unpack ? [] : ['--no-unpack'])]);
    assert.is(r.code, 0, r.stderr + r.stdout);
    // The bzImage booted through its vmlinux from the cache, or through its own decompressor.
    assert.match(r.stderr, unpack ? /loaded unpacked \S+ \(vmlinux \S+\.elf\)/ : /loaded bzImage \S+, entry 0x100200/);
    assert.match(r.stdout, new RegExp(`nproc=${vcpus}\\r?\\n`));
    assert.match(r.stdout, new RegExp(`cpuinfo=${vcpus}\\r?\\n`));
    const kb = Number(/mem_kb=(\d+)/.exec(r.stdout)?.[1]);
    // MemTotal is RAM minus what the kernel reserves for itself: within 25% below the configured size.
    assert.ok(kb <= memMiB * 1024 && kb > memMiB * 1024 * 0.75, `MemTotal ${kb} kB for ${memory}`);
    assert.match(r.stdout, 'tsvmm-init: exit=0');
    assert.match(r.stderr, 'guest powered off');
  });
}

test("the default kernel's ELF vmlinux boots too (entry from its PVH note), 2 vCPUs", async () => {
  const guest = await ensureDefaultGuest();
  assert.ok(guest.vmlinux, 'tools/guest/fetch-kernel.sh unpacked the vmlinux');
  const r = await runGuestCommand('echo "nproc=$(nproc)"', ['--kernel', guest.vmlinux!, '--initrd', guest.initrd, '--vcpus', '2']);
  assert.is(r.code, 0, r.stderr + r.stdout);
  assert.match(r.stderr, `loaded elf ${guest.vmlinux}`);
  assert.match(r.stdout, /nproc=2\r?\n/);
  assert.match(r.stdout, 'tsvmm-init: exit=0');
  assert.match(r.stderr, 'guest powered off');
});

test('console input reaches the guest and its output reaches the host', async () => {
  // The guest asks for a line once its console is open; we type it then (bytes sent earlier
  // would be flushed when the 8250 driver opens the port, as on real hardware).
  const r = await tsvmm(['run', '--append', `quiet ${encodeGuestCommand('echo ASK; read line; echo "got:$line"')}`], {
    respond: { when: 'ASK', send: 'hello serial\n' },
  });
  assert.is(r.code, 0, r.stderr);
  assert.match(r.stdout, 'got:hello serial');
});

test('guest reboot exits with 3', async () => {
  const r = await runGuestCommand('reboot -f');
  assert.is(r.code, 3, r.stderr);
  assert.match(r.stderr, 'reset');
});

test('a guest triple fault exits with 5', async () => {
  // reboot=t: the kernel restarts by loading an empty IDT and raising int3, i.e. a triple fault (KVM_EXIT_SHUTDOWN).
  const r = await runGuestCommand('reboot -f', ['--append', 'reboot=t']);
  assert.is(r.code, 5, r.stderr);
  assert.match(r.stderr, 'triple fault');
  // The crash explains itself: registers (or, on AMD, that KVM's INIT replaced them) and the
  // vCPU's last exits, the shutdown last.
  assert.match(r.stderr, /vCPU \d+ at the crash:\n.*(\(these are the INIT state|  rip 0x)/);
  assert.match(r.stderr, /last \d+ exits, oldest first: .*shutdown$/m);
});

test('guest kernel panic exits with 4 (pvpanic)', async () => {
  const r = await runGuestCommand('echo c > /proc/sysrq-trigger');
  assert.is(r.code, 4, r.stderr);
  assert.match(r.stderr, 'panicked');
});

test('a malformed kernel image fails before any vCPU starts', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-bad-'));
  const guest = await ensureDefaultGuest();
  const truncated = join(dir, 'truncated');
  writeFileSync(truncated, readFileSync(guest.kernel).subarray(0, 100_000));
  const text = join(dir, 'text');
  writeFileSync(text, 'not a kernel\n'.repeat(1000));
  for (const [path, why] of [[truncated, 'truncated'], [text, 'not a Linux kernel'], [join(dir, 'missing'), 'no such file']] as const) {
    const r = await tsvmm(['run', '--kernel', path]);
    assert.is(r.code, 1, `${path}: ${r.stderr}`);
    assert.match(r.stderr, why);
    assert.not.match(r.stderr, 'vCPU thread');
  }
});

test.run();
