// Many machines in one process (the library booting VMs in parallel) share the kernel and initrd
// images and every module of the boot path: nothing a machine writes into its guest memory before
// the first instruction (kernel, initrd, command line, GDT, page tables, zero page, ACPI tables)
// may depend on another machine, nor may loading change the images the next machine loads.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync } from 'node:fs';
import { GuestMemory } from '../../../devices/memory';
import { buildAcpiTables } from '../../../vmm/acpi/index';
import { loadKernel } from '../../../vmm/boot/loader';
import { needs } from '../../needs';
import { BASE, tsvmmConfig } from '../acpi/helpers';
import { NO_KERNEL, cachedKernel, makeBzImage } from './images';

const MiB = 0x10_0000;
const ACPI_ADDR = BASE;

/** What Machine.build writes before the vCPUs start, into fresh guest RAM of `size` bytes. */
function bootImage(kernel: Uint8Array, initrd: Uint8Array, cmdline: string, size: number): Uint8Array {
  const bytes = new Uint8Array(size);
  const mem = new GuestMemory([{ gpa: 0, bytes }]);
  const acpi = buildAcpiTables(tsvmmConfig(1, 1), ACPI_ADDR);
  mem.write(ACPI_ADDR, acpi.image);
  loadKernel(mem, [{ gpa: 0, size }], { kernelPath: 'k', kernel, initrd, cmdline }, acpi.rsdpAddr);
  return bytes;
}

function sameGuests(kernel: Uint8Array, initrd: Uint8Array, size: number): void {
  const kernelBefore = kernel.slice();
  const initrdBefore = initrd.slice();
  const first = bootImage(kernel, initrd, 'console=ttyS0', size);
  // A machine in between with another command line (its zero page and cmdline differ).
  const other = bootImage(kernel, initrd, 'console=ttyS0 quiet tsvmm.cmd=ZWNobyBoaQ==', size);
  const third = bootImage(kernel, initrd, 'console=ttyS0', size);
  assert.ok(Buffer.compare(first, third) === 0, 'two machines loading the same images have identical guest memory');
  assert.ok(Buffer.compare(first, other) !== 0, 'the check sees a different command line');
  assert.ok(Buffer.compare(kernel, kernelBefore) === 0, 'the kernel image is not modified by loading it');
  assert.ok(Buffer.compare(initrd, initrdBefore) === 0, 'the initrd is not modified by loading it');
}

test('one synthetic image loaded by three machines: the same guest memory, the image untouched', () => {
  const initrd = new Uint8Array(64 * 1024).map((_, i) => (i * 7) & 0xff);
  sameGuests(makeBzImage({ kernelLength: 0x8000, initSize: 0x100000 }), initrd, 32 * MiB);
});

needs(NO_KERNEL)('the Debian kernel loaded by three machines: the same guest memory, the image untouched', () => {
  const kernel = new Uint8Array(readFileSync(cachedKernel()!.kernel));
  const initrd = new Uint8Array(3 * MiB).map((_, i) => (i * 13) & 0xff);
  sameGuests(kernel, initrd, 128 * MiB);
});

test.run();
