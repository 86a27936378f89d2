// Host files in a real guest through virtio-fs and the real virtiofsd, in three boots:
//  1. `exec --share RO:/mnt/ro,ro --share RW:/mnt/rw` started in RW/sub: 1,000 host files
//     (64 MiB) read byte-exact, a 1 MiB file the guest writes is on the host byte for byte,
//     the read-only share refuses writes with EROFS also after the guest remounts it
//     read-write, CMD runs in the caller's directory (its guest path), and after exit no
//     virtiofsd and no socket directory is left.
//  2. `exec --rootfs host --share RW:/root/rw` started in /usr/share: the host's own
//     dynamically linked python3 runs in the guest, in the caller's directory, with a share
//     mounted inside the host root; then its root daemon is killed and tsvmm ends with the
//     daemon's death named, the other daemon stopped.
//  3. `exec --share` ended by SIGTERM while CMD runs: no daemon, no socket directory left.
// And without a virtiofsd, one line saying how to get one, before anything boots.
// Each tsvmm runs with a TMPDIR of its own, so its daemons (their socket path is under it)
// and their directories are told apart from anything else on the machine.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { firstMissing, needs } from '../needs';
import { tsvmm, type RunResult } from './helpers';
import { findVirtiofsd } from '../../devices/virtio/fs/daemon';

const missingDaemon = (() => {
  try {
    findVirtiofsd();
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
})();
const missingRoot = process.getuid?.() === 0 ? undefined : 'needs root (virtiofsd sandboxes itself with chroot)';
const it = needs(firstMissing(missingDaemon, missingRoot));

// Host data: written where the sandbox lets a test write (its output share), else /tmp.
const data = mkdtempSync(join(process.env.TSVMM_SANDBOX_OUT ?? tmpdir(), 'tsvmm-files-'));
const RO = join(data, 'ro');
const RW = join(data, 'rw');
const FILES = 1000;
const TOTAL = 64 << 20;
const md5 = (b: Uint8Array) => createHash('md5').update(b).digest('hex');

/** 1,000 files in 10 directories, sizes around 64 KiB, 64 MiB in all; their md5 by path. */
function makeTree(): Map<string, string> {
  const sums = new Map<string, string>();
  let left = TOTAL;
  for (let i = 0; i < FILES; i++) {
    const size = i === FILES - 1 ? left : Math.floor(TOTAL / FILES) + ((i * 7919) % 8192) - 4096;
    left -= size;
    const rel = `d${i % 10}/f${String(i).padStart(4, '0')}`;
    const bytes = randomBytes(size);
    mkdirSync(join(RO, `d${i % 10}`), { recursive: true });
    writeFileSync(join(RO, rel), bytes);
    sums.set(rel, md5(bytes));
  }
  return sums;
}

interface Daemon { pid: number; cmdline: string }

/** virtiofsd processes whose command line mentions `mark` (a tsvmm's private TMPDIR). */
function daemonsOf(mark: string): Daemon[] {
  const out: Daemon[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0').join(' ');
    } catch {
      continue; // gone meanwhile
    }
    if (cmdline.includes('virtiofsd') && cmdline.includes(mark)) out.push({ pid: Number(p), cmdline });
  }
  return out;
}

/** A private TMPDIR for one tsvmm: its virtiofsd socket directories are made in it. */
const privateTmp = () => mkdtempSync(join(tmpdir(), 'tsvmm-files-tmp-'));
const socketDirs = (tmp: string) => readdirSync(tmp).filter((n) => n.startsWith('tsvmm-virtiofs-'));

/** `key=value` lines of the guest's output (the last one wins). */
function factsOf(stdout: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const l of stdout.matchAll(/^(\w+)=(.*)$/gm)) m.set(l[1]!, l[2]!);
  return m;
}
const show = (r: RunResult | undefined) => `exit ${r?.code}\nstdout (tail):\n${r?.stdout.slice(-3000)}\nstderr (tail):\n${r?.stderr.slice(-3000)}`;

const WRITE_BYTES = 1 << 20;
const GUEST1 = [
  'echo "cwd=$(pwd)"',
  '(cd /mnt/ro && find . -type f | sort | xargs md5sum)',
  `echo "wrote_md5=$(head -c ${WRITE_BYTES} /dev/urandom | tee /mnt/rw/sub/from-guest | md5sum | cut -d" " -f1)"`,
  'sync',
  'echo "ro_create=$( (echo x > /mnt/ro/new) 2>&1 )"',
  'echo "ro_append=$( (echo x >> /mnt/ro/d0/f0000) 2>&1 )"',
  'mount -o remount,rw /mnt/ro; echo "remount=$? $(grep " /mnt/ro " /proc/mounts | cut -d" " -f4 | cut -d, -f1)"',
  'echo "ro_create_after=$( (echo x > /mnt/ro/new) 2>&1 )"',
  'echo "ro_mkdir_after=$(mkdir /mnt/ro/newdir 2>&1)"',
].join('; ');

let sums = new Map<string, string>();
let tmp1 = '';
let run1: RunResult | undefined;
let left1: Daemon[] = [];
let facts1 = new Map<string, string>();

test.before(async () => {
  if (missingDaemon || missingRoot) return;
  sums = makeTree();
  mkdirSync(join(RW, 'sub'), { recursive: true });
  writeFileSync(join(RW, 'marker'), 'from-the-host\n');
  tmp1 = privateTmp();
  run1 = await tsvmm(['exec', '--append', 'quiet', '--share', `${RO}:/mnt/ro,ro`, '--share', `${RW}:/mnt/rw`, '--', 'sh', '-c', GUEST1], {
    cwd: join(RW, 'sub'), env: { TMPDIR: tmp1 }, timeoutMs: 600_000,
  });
  left1 = daemonsOf(tmp1);
  facts1 = factsOf(run1.stdout);
});

test.after(() => rmSync(data, { recursive: true, force: true }));

it('1,000 host files (64 MiB) read byte-exact through a read-only share', () => {
  assert.is(run1?.code, 0, show(run1));
  const got = new Map<string, string>();
  for (const m of run1!.stdout.matchAll(/^([0-9a-f]{32}) {2}\.\/(\S+)$/gm)) got.set(m[2]!, m[1]!);
  assert.is(got.size, FILES, `the guest listed ${got.size} files\n${show(run1)}`);
  const wrong = [...sums].filter(([rel, sum]) => got.get(rel) !== sum).map(([rel]) => rel);
  assert.equal(wrong, [], 'files whose guest md5 differs from the host');
});

it('a file the guest writes through a read-write share is on the host, byte for byte', () => {
  const f = join(RW, 'sub', 'from-guest');
  assert.ok(existsSync(f), show(run1));
  const bytes = readFileSync(f);
  assert.is(bytes.length, WRITE_BYTES);
  assert.is(md5(bytes), facts1.get('wrote_md5'), show(run1));
});

it('a read-only share refuses writes with EROFS, also after the guest remounts it read-write', () => {
  for (const k of ['ro_create', 'ro_append', 'ro_create_after', 'ro_mkdir_after']) {
    assert.match(facts1.get(k) ?? '', 'Read-only file system', `${k}\n${show(run1)}`);
  }
  // The guest's side did become read-write: the refusal after it is the host's.
  assert.is(facts1.get('remount'), '0 rw', show(run1));
  assert.not.ok(existsSync(join(RO, 'new')) || existsSync(join(RO, 'newdir')));
  assert.is(md5(readFileSync(join(RO, 'd0/f0000'))), sums.get('d0/f0000'));
});

it('exec runs CMD in the caller\'s directory when the guest sees it (inside a share: its guest path)', () => {
  assert.is(facts1.get('cwd'), '/mnt/rw/sub', show(run1));
});

it('after exec exits no virtiofsd is left, nor its socket directory', () => {
  assert.is(run1?.code, 0, show(run1));
  assert.equal(left1, []);
  assert.equal(socketDirs(tmp1), []);
});

// ---------------------------------------------------------------------------------------------
// 2. --rootfs host, then the daemon's death.

const GUEST2 = [
  'echo "cwd=$(pwd)"',
  'echo "py=$(python3 -c "print(1)")"',
  'echo "pyver=$(python3 -c "import sys; print(sys.version)")"',
  'echo "interp=$(head -c 4096 /usr/bin/python3 | grep -c -a /ld-linux)"',
  'echo "marker=$(cat /root/rw/marker)"',
  'echo ready',
  'exec sleep 600',
].join('; ');

let tmp2 = '';
let run2: RunResult | undefined;
let killed: Daemon | undefined;
let during2: Daemon[] = [];
let left2: Daemon[] = [];
let facts2 = new Map<string, string>();
const hostPython = spawnSync('/usr/bin/python3', ['-c', 'import sys; print(sys.version)'], { encoding: 'utf8' });

it('--rootfs host: the host\'s own python3 (dynamically linked) runs in the guest, in the caller\'s directory, with a share inside', async () => {
  assert.is(hostPython.status, 0, 'the host has /usr/bin/python3');
  tmp2 = privateTmp();
  run2 = await tsvmm(['exec', '--append', 'quiet', '--rootfs', 'host', '--share', `${RW}:/root/rw`, '--', 'sh', '-c', GUEST2], {
    cwd: '/usr/share', env: { TMPDIR: tmp2 }, timeoutMs: 600_000,
    onStdout: (out) => {
      if (killed || !out.includes('\nready\n')) return;
      during2 = daemonsOf(tmp2);
      // The root share's daemon serves a read-only bind mount in its socket directory.
      killed = during2.find((d) => / -o source=\S+\/ro( |$)/.test(d.cmdline));
      if (killed) process.kill(killed.pid, 'SIGKILL');
    },
  });
  left2 = daemonsOf(tmp2);
  facts2 = factsOf(run2.stdout);
  assert.is(facts2.get('py'), '1', show(run2));
  assert.is(facts2.get('pyver'), hostPython.stdout.trim().split('\n')[0], show(run2));
  assert.is(facts2.get('interp'), '1', 'python3 has a program interpreter (ld-linux): it is dynamically linked');
  assert.is(facts2.get('cwd'), '/usr/share', show(run2));
  assert.is(facts2.get('marker'), 'from-the-host', show(run2));
});

it('a virtiofsd that dies ends the VM with its death named; the other daemon is stopped', () => {
  assert.is(during2.length, 2, `two daemons while the guest ran: ${JSON.stringify(during2)}\n${show(run2)}`);
  assert.ok(killed, `the root share's daemon was found: ${JSON.stringify(during2)}`);
  assert.is.not(run2?.code, 0, show(run2));
  assert.match(run2!.stderr, `virtiofsd for share /:/,ro (pid ${killed!.pid}) killed by SIGKILL`, show(run2));
  assert.equal(left2, []);
  assert.equal(socketDirs(tmp2), []);
});

// ---------------------------------------------------------------------------------------------
// 3. SIGTERM.

it('exec ended by SIGTERM while CMD runs: no virtiofsd and no socket directory left', async () => {
  const tmp = privateTmp();
  let during: Daemon[] = [];
  let signalled = false;
  const r = await tsvmm(['exec', '--append', 'quiet', '--share', `${RW}:/mnt/rw`, '--', 'sh', '-c', 'cat /mnt/rw/marker; exec sleep 600'], {
    env: { TMPDIR: tmp }, timeoutMs: 600_000,
    onStdout: (out, child) => {
      if (signalled || !out.includes('from-the-host')) return;
      signalled = true;
      during = daemonsOf(tmp);
      child.kill('SIGTERM');
    },
  });
  assert.ok(signalled, show(r));
  assert.is(during.length, 1, `one daemon while CMD ran: ${JSON.stringify(during)}`);
  assert.match(r.stderr, 'interrupted', show(r));
  assert.equal(daemonsOf(tmp), []);
  assert.equal(socketDirs(tmp), []);
});

it('without a virtiofsd: one line saying how to get one, before anything boots', async () => {
  const r = await tsvmm(['exec', '--share', `${RW}:/mnt/rw`, '--', 'true'], { env: { TSVMM_VIRTIOFSD: join(data, 'no-such-virtiofsd') }, timeoutMs: 60_000 });
  assert.is.not(r.code, 0);
  const lines = r.stderr.trim().split('\n');
  assert.is(lines.length, 1, r.stderr);
  assert.match(lines[0]!, /no-such-virtiofsd is not an executable file: install it/);
  assert.match(lines[0]!, 'apt-get install');
});

test.run();
