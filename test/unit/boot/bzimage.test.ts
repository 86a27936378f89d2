// bzImage parsing (vmm/boot/bzimage.ts): synthetic headers for each refusal, and the cached
// Debian kernel.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readFileSync } from 'node:fs';
import { isBzImage, parseBzImage } from '../../../vmm/boot/bzimage';
import { KernelImageError } from '../../../vmm/boot/errors';
import { needs } from '../../needs';
import { NO_KERNEL, cachedKernel, makeBzImage } from './images';

/** Asserts that parsing throws a KernelImageError whose message names the file and matches `re`. */
function refuses(image: Uint8Array, re: RegExp): void {
  try {
    parseBzImage('/k/bzImage', image);
  } catch (e) {
    assert.instance(e, KernelImageError);
    const msg = (e as Error).message;
    assert.ok(msg.startsWith('/k/bzImage: '), msg);
    assert.match(msg, re);
    return;
  }
  assert.unreachable('parseBzImage accepted a bad image');
}

test('a well-formed 2.15 header: kernel after the setup sectors, header fields read', () => {
  const img = makeBzImage({ setupSects: 4, kernelLength: 0x3000, initSize: 0x20000, initrdAddrMax: 0x37ffffff, cmdlineSize: 1000 });
  assert.ok(isBzImage(img));
  const bz = parseBzImage('k', img);
  assert.is(bz.version, 0x020f);
  assert.is(bz.kernel.length, 0x3000);
  assert.is(bz.kernel[0], 0);
  assert.is(bz.kernel[0x1ff], 0xff);
  assert.is(bz.kernel.byteOffset, 5 * 512);
  assert.is(bz.initSize, 0x20000);
  assert.is(bz.initrdAddrMax, 0x37ffffff);
  assert.is(bz.cmdlineSize, 1000);
  // The header copy runs from setup_sects (0x1f1) to 0x202 + the jump offset.
  assert.is(bz.header.length, 0x202 + 0x66 - 0x1f1);
  assert.is(bz.header[0], 4);
  assert.is(new DataView(bz.header.buffer, bz.header.byteOffset).getUint32(0x202 - 0x1f1, true), 0x53726448);
});

test('setup_sects 0 means 4', () => {
  const img = makeBzImage({ setupSects: 4 });
  img[0x1f1] = 0;
  assert.is(parseBzImage('k', img).kernel.byteOffset, 5 * 512);
});

test('refuses: wrong magic', () => {
  const img = makeBzImage({ magic: 0x12345678 });
  assert.not.ok(isBzImage(img));
  refuses(img, /not a bzImage/);
  const noBootFlag = makeBzImage();
  noBootFlag[0x1fe] = 0;
  refuses(noBootFlag, /not a bzImage/);
});

test('refuses: boot protocol 2.11 is too old', () => {
  refuses(makeBzImage({ version: 0x020b }), /protocol 2\.11 is too old \(need >= 2\.12\)/);
});

test('refuses: no 64-bit entry', () => {
  refuses(makeBzImage({ xloadflags: 0x2 }), /XLF_KERNEL_64/);
});

test('refuses: truncated (syssize past the end of the file)', () => {
  refuses(makeBzImage({ kernelLength: 0x2000, syssize: 0x2000 / 16 + 1 }), /truncated/);
  refuses(makeBzImage().subarray(0, 0x1800), /truncated/);
});

test('refuses: empty and short files', () => {
  refuses(new Uint8Array(0), /too short.*0 bytes/);
  refuses(new Uint8Array(0x500), /too short/);
  assert.not.ok(isBzImage(new Uint8Array(0)));
});

needs(NO_KERNEL)('the cached Debian kernel parses', () => {
  const kernel = cachedKernel()!.kernel;
  const img = new Uint8Array(readFileSync(kernel));
  const bz = parseBzImage(kernel, img);
  assert.ok(bz.version >= 0x020c, `version 0x${bz.version.toString(16)}`);
  assert.is(bz.kernel.length, img.length - (img[0x1f1]! + 1) * 512);
  assert.ok(bz.initSize > bz.kernel.length, 'init_size covers the decompressed kernel');
  assert.ok(bz.cmdlineSize >= 255);
  assert.ok(bz.initrdAddrMax >= 0x37ffffff);
});

test.run();
