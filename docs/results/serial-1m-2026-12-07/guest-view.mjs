#!/usr/bin/env node
// guest-view.mjs OUT: what the guest sees of its CPU, clock and interrupt controllers under
// each VMM — the serial bench's exact boot (tools/bench/lib.mjs: same kernel, initramfs,
// command line; QEMU microvm -cpu host, tsvmm run --quiet) with a command that prints CPUID
// flags, the KVM paravirt features the kernel took, the clocksource, and the boot log's
// timer/APIC/clock lines. Run inside the sandbox (tools/sandbox/run.sh --out OUT -- node ...).
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BASE_CMDLINE, guestCmd, guestFiles, qemuArgs, runTimed, tsvmmArgs } from '../../../tools/bench/lib.mjs';

const out = process.argv[2] ?? '.';
const script = [
  'echo view-start',
  'grep -m1 "^flags" /proc/cpuinfo',
  'cat /sys/devices/system/clocksource/clocksource0/current_clocksource /sys/devices/system/clocksource/clocksource0/available_clocksource',
  'cat /proc/interrupts',
  'dmesg | grep -iE "kvm|clock|tsc|apic|x2apic|timer|hpet|pit|8259|ioapic|serial|ttyS|lapic|deadline|paravirt|hypervisor"',
  'echo view-end',
].join('; ');
const { kernel, initrd } = guestFiles({ kernel: '', initrd: '' });
const conf = { kernel, initrd, cmdline: `${BASE_CMDLINE} ${guestCmd(script)}`, vcpus: 1, memory: '512M', qemu: 'qemu-system-x86_64', qemuCpu: 'host' };
for (const [name, { cmd, args }] of Object.entries({ tsvmm: tsvmmArgs(conf), qemu: qemuArgs(conf) })) {
  let text = '';
  const r = await runTimed(cmd, args, { timeoutMs: 240_000, onData: (d) => { text += d; } });
  const a = text.indexOf('view-start');
  const b = text.lastIndexOf('view-end');
  writeFileSync(join(out, `guest-view-${name}.txt`), a >= 0 && b > a ? text.slice(a, b) : `(no view: exit ${r.code} ${r.timedOut ? 'timed out' : ''})\n${text.slice(-3000)}`);
  process.stderr.write(`${name}: ${r.ms.toFixed(0)} ms, exit ${r.code}\n`);
}
