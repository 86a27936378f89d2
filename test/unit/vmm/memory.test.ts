// GuestRam.mapFile (vmm/memory.ts): a file's pages mapped over guest RAM copy-on-write, what
// the unpacked kernel is loaded with. Real mappings; the VM is a stand-in that accepts the
// memory slots (no KVM here), since mapFile only touches this process's mappings.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Vm } from '../../../kvm/kvm';
import { GuestRam } from '../../../vmm/memory';

const PAGE = 4096;
const MiB = 0x10_0000;
const slots = { setUserMemoryRegion: () => {} } as unknown as Vm;

/** A temp file of `pages` pages, page i filled with i + 1; its fd is opened read-only. */
function pagesFile(pages: number): { path: string; fd: number; bytes: Uint8Array; done(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-mapfile-'));
  const path = join(dir, 'img');
  const bytes = new Uint8Array(pages * PAGE);
  for (let i = 0; i < pages; i++) bytes.fill(i + 1, i * PAGE, (i + 1) * PAGE);
  writeFileSync(path, bytes);
  const fd = openSync(path, 'r');
  return { path, fd, bytes, done: () => { closeSync(fd); rmSync(dir, { recursive: true }); } };
}

test('mapped pages read as the file; a write changes the guest page only, not the file or its neighbours', () => {
  const ram = new GuestRam(slots, 16 * MiB);
  const f = pagesFile(4);
  try {
    ram.memory.expect(2 * MiB - PAGE, 1)[0] = 0x77; // RAM just before the mapping: kept
    assert.ok(ram.mapFile(2 * MiB, f.fd, PAGE, 3 * PAGE));
    assert.equal(ram.memory.expect(2 * MiB, 3 * PAGE), f.bytes.subarray(PAGE));
    assert.is(ram.memory.expect(2 * MiB - PAGE, 1)[0], 0x77);
    assert.is(ram.memory.expect(2 * MiB + 3 * PAGE, 1)[0], 0, 'RAM after it: still zero');
    ram.memory.expect(2 * MiB + 10, 2).set([0xde, 0xad]);
    assert.equal([...ram.memory.expect(2 * MiB + 9, 4)], [2, 0xde, 0xad, 2]);
    assert.equal(new Uint8Array(readFileSync(f.path)), f.bytes, 'the file is unchanged (MAP_PRIVATE)');
  } finally {
    ram.close();
    f.done();
  }
});

test('refused, with nothing mapped: unaligned address, offset or length, outside RAM, shared RAM', () => {
  const ram = new GuestRam(slots, 16 * MiB);
  const shared = new GuestRam(slots, 16 * MiB, { shared: true });
  const f = pagesFile(2);
  try {
    assert.not.ok(ram.mapFile(MiB + 8, f.fd, 0, PAGE));
    assert.not.ok(ram.mapFile(MiB, f.fd, 8, PAGE));
    assert.not.ok(ram.mapFile(MiB, f.fd, 0, PAGE - 8));
    assert.not.ok(ram.mapFile(16 * MiB - PAGE, f.fd, 0, 2 * PAGE), 'past the end of RAM');
    assert.not.ok(ram.mapFile(MiB, f.fd, 0, 0));
    assert.ok(ram.memory.expect(MiB, PAGE).every((b) => b === 0));
    // A vhost-user back-end maps the memfd: private pages here would be invisible to it.
    assert.not.ok(shared.mapFile(MiB, f.fd, 0, PAGE));
    assert.ok(shared.memory.expect(MiB, PAGE).every((b) => b === 0));
  } finally {
    ram.close();
    shared.close();
    f.done();
  }
});

test.run();
