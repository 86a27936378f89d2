// Host -> guest map writes (MAP_UPDATE, docs/hypercall.md §4.2) through the real agent and the
// real HypercallDevice on this host (no VM): a raw-tracepoint program that reports its
// `config` map's value at every process exit shows each write taking effect in the kernel;
// sizes are checked by the agent against the map it created (the host's own check is bypassed
// here on purpose), unknown maps and handles come back NOENT, ring buffers are refused.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { Asm, fp, r0, r1, r2, r3, r4 } from '../../../bpf/asm';
import { MapType, programFromAsm, serializePackage, type Package } from '../../../bpf/package';
import type { PackageBytes } from '../../../devices/hypercall';
import { startRig } from './hcrig';

const TYPE = 901;

/** At every process exit: {type 901, len 16, config[0], tgid}. */
function probe(): Package {
  const maps = [
    { name: 'hints', type: MapType.ringbuf, keySize: 0, valueSize: 0, maxEntries: 4096, flags: 0 },
    { name: 'config', type: MapType.array, keySize: 4, valueSize: 4, maxEntries: 1, flags: 0 },
  ];
  const a = new Asm()
    .store('u32', fp, -4, 0)
    .ldMap(r1, 'config').mov(r2, fp).add(r2, -4)
    .call('map_lookup_elem')
    .jeq(r0, 0, 'out')
    .load('u32', r1, r0, 0).store('u32', fp, -16 + 8, r1)
    .store('u32', fp, -16, TYPE).store('u32', fp, -12, 16)
    .call('get_current_pid_tgid').rsh(r0, 32).store('u32', fp, -16 + 12, r0)
    .ldMap(r1, 'hints').mov(r2, fp).add(r2, -16).mov(r3, 16).mov(r4, 0)
    .call('ringbuf_output')
    .label('out')
    .mov(r0, 0)
    .exit();
  return { name: 'mapset-probe', license: 'GPL', maps, hintMap: 0, programs: [programFromAsm('on_exit', { kind: 'raw_tracepoint', target: 'sched_process_exit' }, a.assemble(), maps)] };
}

function bytesOf(pkg: Package): PackageBytes {
  const bytes = serializePackage(pkg);
  return { id: pkg.name, digest: bytes.subarray(bytes.length - 32), bytes };
}

const u32 = (n: number) => new Uint8Array(new Uint32Array([n]).buffer);

test('a map write reaches the guest program; the agent checks sizes, names and handles', async () => {
  const rig = await startRig();
  try {
    const seen = new Map<number, number>(); // tgid -> config value the program read
    rig.dev.onHints(TYPE, (rec) => {
      const dv = new DataView(rec.buffer, rec.byteOffset, rec.byteLength);
      seen.set(dv.getUint32(12, true), dv.getUint32(8, true));
    });
    const load = await rig.dev.submit({ op: 'load', pkg: bytesOf(probe()) });
    assert.is(load.outcome, 'OK', load.text.slice(-600));
    const exitValue = async () => {
      const pid = spawnSync('true').pid!;
      for (let i = 0; i < 250 && !seen.has(pid); i++) await new Promise((r) => setTimeout(r, 20));
      return seen.get(pid);
    };
    assert.is(await exitValue(), 0, 'an array map starts zeroed');
    for (const v of [42, 7]) {
      const w = await rig.dev.submit({ op: 'map-update', handle: load.handle, map: 'config', key: u32(0), value: u32(v), flags: 0 });
      assert.is(w.outcome, 'OK', w.text);
      assert.is(await exitValue(), v, `the program reads ${v} after the write`);
    }
    const bad = await rig.dev.submit({ op: 'map-update', handle: load.handle, map: 'config', key: new Uint8Array(8), value: u32(1), flags: 0 });
    assert.is(bad.outcome, 'FAILED');
    assert.is(bad.errno, 22);
    assert.match(bad.text, /takes 4-byte keys and 4-byte values, got 8 and 4/);
    const ring = await rig.dev.submit({ op: 'map-update', handle: load.handle, map: 'hints', key: new Uint8Array(0), value: new Uint8Array(0), flags: 0 });
    assert.match(ring.text, /ring buffer/);
    const none = await rig.dev.submit({ op: 'map-update', handle: load.handle, map: 'nosuch', key: u32(0), value: u32(1), flags: 0 });
    assert.is(none.outcome, 'NOENT');
    const noent = await rig.dev.submit({ op: 'map-update', handle: load.handle, map: 'config', key: u32(5), value: u32(1), flags: 0 });
    assert.is(noent.outcome, 'FAILED', 'index 5 of a 1-entry array: the kernel says E2BIG');
    assert.is(noent.errno, 7);
    assert.is(await exitValue(), 7, 'failed writes changed nothing');
  } finally {
    await rig.stop();
  }
});

test.run();
