// tools/symbolize.mjs: the kernel addresses of a diagnosis named from a System.map (nearest
// text symbol at or below, with the offset), everything else left as it was, and a stub map
// (Debian's linux-image package ships one) refused with a pointer to the -dbg package.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectRoot } from '../../../vmm/default-guest';

const tool = join(projectRoot(), 'tools/symbolize.mjs');
const dir = mkdtempSync(join(tmpdir(), 'tsvmm-symbolize-'));
const map = join(dir, 'System.map');
writeFileSync(map, [
  'ffffffff81000000 T _stext',
  'ffffffff81a592f0 T native_halt',
  'ffffffff81a5a3e0 T __pv_queued_spin_lock_slowpath',
  'ffffffff81a5a700 d some_data',
  'ffffffff81a5a800 t local_helper',
].join('\n'));

const run = (input: string, args = [map]) => spawnSync(process.execPath, [tool, ...args], { input, encoding: 'utf8' });

test('addresses get symbol+offset; data symbols and other numbers are left alone', () => {
  const r = run('rip 0xffffffff81a5a45e IF=0\n    stack: 0xffffffff81a592fa 0xffffffff81a5a7ff 0xffffffff81a5a810 0x1234\n');
  assert.is(r.status, 0, r.stderr);
  assert.is(r.stdout, 'rip 0xffffffff81a5a45e <__pv_queued_spin_lock_slowpath+0x7e> IF=0\n'
    + '    stack: 0xffffffff81a592fa <native_halt+0xa> 0xffffffff81a5a7ff <__pv_queued_spin_lock_slowpath+0x41f> 0xffffffff81a5a810 <local_helper+0x10> 0x1234\n');
  assert.is(run('rip 0xffffffff80001000\n').stdout, 'rip 0xffffffff80001000\n', 'below the first symbol: unnamed');
});

test("Debian's stub System.map is refused with where the real one is", () => {
  const stub = join(dir, 'stub.map');
  writeFileSync(stub, 'ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n');
  const r = run('', [stub]);
  assert.is(r.status, 1);
  assert.match(r.stderr, /-dbg package/);
});

test.after(() => rmSync(dir, { recursive: true, force: true }));
test.run();
