// virtio-blk and virtio-rng in a real guest, in one boot: the guest's / is an ext4 image made
// on the host with `mkfs.ext4 -d` from the agent's own initramfs tree (`--drive ...,root`: the
// initramfs init mounts /dev/vda and switches to it), a file the guest writes there is read
// back on the host with debugfs, a second drive given read-only refuses the guest's writes and
// keeps its bytes while its reads match the host's, GET_ID's answer is the drive's id, and
// /dev/hwrng delivers bytes from virtio-rng.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureDefaultGuest } from '../../vmm/default-guest';
import { firstMissing, missingCommand, needs } from '../needs';
import { tsvmm, type RunResult } from './helpers';

const it = needs(firstMissing(missingCommand('mkfs.ext4', 'debugfs', 'e2fsck', 'cpio')));
const dir = mkdtempSync(join(process.env.TSVMM_SANDBOX_OUT ?? tmpdir(), 'tsvmm-blk-'));
const rootImg = join(dir, 'root.img');
const dataImg = join(dir, 'data.img');
const DATA_BYTES = 1 << 20;
const data = Uint8Array.from({ length: DATA_BYTES }, (_, i) => (i * 31 + (i >> 12)) & 0xff);
const md5 = (b: Uint8Array) => createHash('md5').update(b).digest('hex');

// The guest's script: one line per fact, read back by the tests below.
const GUEST = [
  'echo "mount=$(grep " / " /proc/mounts | tail -n 1 | cut -d" " -f1-4)"',
  'echo "marker=$(cat /marker.txt)"',
  'echo written-by-the-guest > /from-guest.txt && sync && echo "wrote=$?"',
  'echo "vdb_ro=$(cat /sys/block/vdb/ro) vdb_serial=$(cat /sys/block/vdb/serial) vdb_sectors=$(cat /sys/block/vdb/size)"',
  'echo "vdb_md5=$(md5sum < /dev/vdb | cut -d" " -f1)"',
  'dd if=/dev/zero of=/dev/vdb bs=512 count=1 oflag=direct 2>/dev/null; echo "vdb_write=$?"',
  'echo "rng_current=$(cat /sys/class/misc/hw_random/rng_current)"',
  'echo "rng_bytes=$(head -c 8192 /dev/hwrng | wc -c) rng_nonzero=$(head -c 8192 /dev/hwrng | tr -d "\\000" | wc -c)"',
].join('; ');

let run: RunResult | undefined;
const facts = new Map<string, string>();

test.before(async () => {
  if (missingCommand('mkfs.ext4', 'debugfs', 'e2fsck', 'cpio')) return;
  // The root filesystem: the agent initramfs's tree (busybox, init, agent, modules) plus a marker.
  const { initrd } = await ensureDefaultGuest();
  const tree = join(dir, 'tree');
  mkdirSync(tree);
  execFileSync('sh', ['-c', 'gzip -dc "$1" | cpio -idm --quiet', 'sh', initrd], { cwd: tree });
  writeFileSync(join(tree, 'marker.txt'), 'made-by-mkfs\n');
  execFileSync('mkfs.ext4', ['-q', '-F', '-L', 'tsvmm-root', '-d', tree, rootImg, '64M']);
  writeFileSync(dataImg, data);
  run = await tsvmm(['exec', '--append', 'quiet', '--drive', `path=${dataImg},ro,id=data-drive`, '--drive', `path=${rootImg},root,id=root`, '--', 'sh', '-c', GUEST], { timeoutMs: 600_000 });
  for (const m of run.stdout.matchAll(/(\w+)=(\S*)/g)) facts.set(m[1]!, m[2]!);
});

test.after(() => rmSync(dir, { recursive: true, force: true }));

const show = () => `exit ${run?.code}\nstdout:\n${run?.stdout}\nstderr:\n${run?.stderr.slice(-3000)}`;

it('the guest boots with / on the ext4 root drive, read-write, and sees the host-made file', () => {
  assert.is(run?.code, 0, show());
  assert.match(run!.stdout, 'mount=/dev/vda / ext4 rw', show());
  assert.is(facts.get('marker'), 'made-by-mkfs', show());
});

it('a file the guest wrote on its root drive is there for debugfs on the host', () => {
  assert.is(facts.get('wrote'), '0', show());
  // The guest synced but did not unmount: let e2fsck replay the journal first (exit 0: clean,
  // 1: fixed, i.e. replayed), then the filesystem must be consistent.
  const fsck = spawnSync('e2fsck', ['-fy', rootImg], { encoding: 'utf8' });
  assert.ok(fsck.status === 0 || fsck.status === 1, `e2fsck exit ${fsck.status}: ${fsck.stdout}${fsck.stderr}`);
  assert.is(spawnSync('e2fsck', ['-fn', rootImg]).status, 0, 'clean after the replay');
  const cat = execFileSync('debugfs', ['-R', 'cat /from-guest.txt', rootImg], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  assert.is(cat, 'written-by-the-guest\n');
});

it('a read-only drive: the guest reads the host bytes, GET_ID gives its id, a write is refused and changes nothing', () => {
  assert.is(facts.get('vdb_ro'), '1', show());
  assert.is(facts.get('vdb_serial'), 'data-drive', show());
  assert.is(facts.get('vdb_sectors'), String(DATA_BYTES / 512), show());
  assert.is(facts.get('vdb_md5'), md5(data), show());
  assert.is.not(facts.get('vdb_write'), '0', show());
  assert.ok(facts.has('vdb_write'), show());
  assert.is(md5(readFileSync(dataImg)), md5(data), 'the image is unchanged');
});

it('/dev/hwrng delivers bytes from virtio-rng', () => {
  assert.match(facts.get('rng_current') ?? '', /^virtio_rng/, show());
  assert.is(facts.get('rng_bytes'), '8192', show());
  assert.ok(Number(facts.get('rng_nonzero')) > 7900, show());
});

test.run();
