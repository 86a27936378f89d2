// The research endpoints through the real HTTP server and the real CLI formatting: the hint
// stream (GET /hints, follow=1 as NDJSON, type filter, a client that hangs up), per-vCPU
// scheduling class and pause (PUT /vcpus/N/sched, PATCH /vcpus/N), halt polling, and the prio
// settings of /scheduler; and the CLI commands over them (hints record/watch, bpf map-set, vcpu
// sched/pause/resume, halt-poll), run in process against the same server.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { apiJson, apiStream, apiCall } from '../../../vmm/api/client';
import { cmdBpf, cmdHaltPoll, cmdHints, cmdVcpu, formatHintLine } from '../../../vmm/api/commands';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { UsageError } from '../../../lib/errors';
import { rig } from './fake';

const entry = (type: number, raw: string) => ({ time: Date.now(), vcpu: 1, source: 2, program: 'affinity', type, name: type === 1 ? 'AFFINITY' : undefined, raw });

test('GET /hints?follow=1 streams records as NDJSON, filtered by type, until the client leaves', async () => {
  const r = await rig({ attach: { vsock: { cid: 3, udsPath: '/nonexistent/v.sock' } } });
  try {
    const pv = r.ctl.machine!.paravirt!;
    pv.stream.publish(entry(1, 'old'));
    const lines: string[] = [];
    const stop = new AbortController();
    const done = apiStream(r.sock, '/hints?follow=1&type=1,7', (l) => {
      lines.push(l);
      if (lines.length === 2) stop.abort();
    }, stop.signal);
    while (pv.stream.counters.readers === 0) await new Promise((res) => setTimeout(res, 5));
    pv.stream.publish(entry(2, 'filtered out'));
    pv.stream.publish(entry(1, 'a'));
    pv.stream.publish(entry(7, 'b'));
    await done;
    assert.equal(lines.map((l) => (JSON.parse(l) as { raw: string }).raw), ['a', 'b'], 'only new records of the asked types');
    for (let i = 0; i < 100 && pv.stream.counters.readers > 0; i++) await new Promise((res) => setTimeout(res, 10));
    assert.is(pv.stream.counters.readers, 0, 'a client that hangs up is unsubscribed');
    // Without follow: the recent history, and the request ends.
    const hist = await apiCall(r.sock, 'GET', '/hints?type=1');
    assert.is(hist.status, 200);
    assert.is(hist.contentType, 'application/x-ndjson');
    assert.equal(hist.text.trim().split('\n').map((l) => (JSON.parse(l) as { raw: string }).raw), ['old', 'a']);
    assert.is((await apiCall(r.sock, 'GET', '/hints?type=x')).status, 400);
    assert.match(formatHintLine(hist.text.split('\n')[0]!), /vcpu=1 affinity#2 AFFINITY raw=old/);
    assert.match(formatHintLine('{"time":0,"lost":12}'), /12 record\(s\) lost/);
  } finally {
    await r.close();
  }
});

test('vCPU class, pause and halt polling through the API; bad input names the field', async () => {
  const r = await rig({ attach: { vsock: { cid: 3, udsPath: join('/nonexistent', 'v.sock') } } });
  try {
    const m = r.ctl.machine!;
    const row = (await apiJson(r.sock, 'PUT', '/vcpus/1/sched', { policy: 'fifo', priority: 7 })) as { sched: unknown; base: unknown };
    assert.equal(row.sched, { policy: 'fifo', priority: 7, nice: 0 });
    assert.equal(m.fake.threads.get(1001), { policy: 1, priority: 7, nice: 0 });
    let res = await apiCall(r.sock, 'PUT', '/vcpus/1/sched', { policy: 'fifo' });
    assert.is(res.status, 400);
    assert.match(res.text, /vcpus\/1\/sched: fifo needs a priority/);
    assert.is((await apiCall(r.sock, 'PUT', '/vcpus/9/sched', { policy: 'idle' })).status, 404);
    const paused = (await apiJson(r.sock, 'PATCH', '/vcpus/0', { state: 'Paused' })) as { paused: boolean };
    assert.is(paused.paused, true);
    assert.is(m.fake.paused[0], true);
    await apiJson(r.sock, 'PATCH', '/vcpus/0', { state: 'Resumed' });
    assert.is(m.fake.paused[0], false);
    res = await apiCall(r.sock, 'PATCH', '/vcpus/0', { state: 'Frozen' });
    assert.match(res.text, /state: 'Frozen' is not one of Paused, Resumed/);
    assert.equal(await apiJson(r.sock, 'GET', '/halt-poll'), { max_ns: 200000, source: 'module' });
    assert.equal(await apiJson(r.sock, 'PUT', '/halt-poll', { max_ns: 0 }), { max_ns: 0, source: 'tsvmm' });
    assert.is(m.fake.haltPoll.ns, 0);
    assert.is((await apiCall(r.sock, 'PUT', '/halt-poll', { max_ns: -1 })).status, 400);
    const sched = (await apiJson(r.sock, 'PUT', '/scheduler', { prio: 'hinted', prio_max: 30 })) as { prio: string; prio_max: number };
    assert.equal([sched.prio, sched.prio_max], ['hinted', 30]);
    const vcpus = (await apiJson(r.sock, 'GET', '/vcpus')) as { vcpus: unknown[] };
    assert.is(vcpus.vcpus.length, 2);
    const progs = (await apiJson(r.sock, 'GET', '/bpf/programs')) as { builtins: { name: string }[] };
    assert.equal(progs.builtins.map((b) => b.name), ['affinity', 'prio']);
  } finally {
    await r.close();
  }
});

test('PUT /bpf/programs/H/maps/NAME: sizes checked against the package before anything is sent', async () => {
  const r = await rig({ attach: { vsock: { cid: 3, udsPath: '/nonexistent/v.sock' } } });
  try {
    const pv = r.ctl.machine!.paravirt!;
    const h = ((await apiJson(r.sock, 'PUT', '/bpf/programs', { builtin: 'prio' })) as { handle: number }).handle;
    const res = (await apiJson(r.sock, 'PUT', `/bpf/programs/${h}/maps/config`, { key: 0, value: { hex: '0100000005000000' } })) as { key: string; value: string };
    assert.equal(res, { handle: h, map: 'config', key: '00000000', value: '0100000005000000' });
    assert.equal(pv.mapWrites, [`${h} config 00000000=0100000005000000`]);
    const bad = async (path: string, body: unknown, status: number, re: RegExp) => {
      const x = await apiCall(r.sock, 'PUT', path, body);
      assert.is(x.status, status, x.text);
      assert.match((JSON.parse(x.text) as { fault_message: string }).fault_message, re);
    };
    await bad(`/bpf/programs/${h}/maps/stash`, { key: 0, value: 1 }, 400, /map.value: 1 does not fit the map's 24-byte values/);
    await bad(`/bpf/programs/${h}/maps/hints`, { key: 0, value: 1 }, 400, /'hints' is a ring buffer/);
    await bad(`/bpf/programs/${h}/maps/config`, { key: 4294967296, value: { hex: '00'.repeat(8) } }, 400, /does not fit the map's 4-byte keys/);
    await bad(`/bpf/programs/${h}/maps/config`, { key: 0, value: { hex: '00' } }, 400, /1 bytes, the map's are 8/);
    await bad(`/bpf/programs/${h}/maps/config`, { key: 'zero', value: 1 }, 400, /expected an integer or \{"hex": "..."\}, got a string/);
    await bad(`/bpf/programs/${h}/maps/nosuch`, { key: 0, value: 1 }, 404, /has no map 'nosuch'/);
    await bad('/bpf/programs/99/maps/config', { key: 0, value: 1 }, 404, /no program with handle 99/);
    assert.is(pv.mapWrites.length, 1, 'nothing bad reached the agent');
  } finally {
    await r.close();
  }
});

/** Runs a CLI command with its stdout and stderr captured. */
async function cli(run: () => Promise<number>): Promise<{ code: number; out: string; err: string }> {
  let out = '', err = '';
  const w = [process.stdout.write, process.stderr.write] as const;
  process.stdout.write = ((c: string | Uint8Array) => ((out += c.toString()), true)) as typeof process.stdout.write;
  process.stderr.write = ((c: string | Uint8Array) => ((err += c.toString()), true)) as typeof process.stderr.write;
  try {
    return { code: await run(), out, err };
  } finally {
    [process.stdout.write, process.stderr.write] = w;
  }
}

test('the CLI: hints record/watch, bpf map-set, vcpu sched/pause/resume and halt-poll reach the VM', async () => {
  const r = await rig({ attach: { vsock: { cid: 3, udsPath: '/nonexistent/v.sock' } } });
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-cli-research-'));
  try {
    const m = r.ctl.machine!;
    const pv = m.paravirt!;
    const sock = ['--api-sock', r.sock];
    // hints record FILE: every record of the asked types as NDJSON, until Ctrl-C.
    const file = join(dir, 'run1.ndjson');
    const rec = cli(() => cmdHints(['record', ...sock, '--type', '1', file]));
    while (pv.stream.counters.readers === 0) await new Promise((res) => setTimeout(res, 5));
    pv.stream.publish(entry(1, 'a'));
    pv.stream.publish(entry(2, 'not asked for'));
    pv.stream.publish(entry(1, 'b'));
    while (!existsSync(file) || readFileSync(file, 'utf8').split('\n').length < 3) await new Promise((res) => setTimeout(res, 5));
    process.emit('SIGINT');
    const recorded = await rec;
    assert.is(recorded.code, 0);
    assert.equal(readFileSync(file, 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { raw: string }).raw), ['a', 'b']);
    assert.match(recorded.err, /recorded 2 hint record\(s\) to /);
    // hints watch: one human line per record.
    while (pv.stream.counters.readers > 0) await new Promise((res) => setTimeout(res, 5)); // record's stream has closed
    const watch = cli(() => cmdHints(['watch', ...sock]));
    while (pv.stream.counters.readers === 0) await new Promise((res) => setTimeout(res, 5));
    pv.stream.publish(entry(7, 'c'));
    await new Promise((res) => setTimeout(res, 100));
    process.emit('SIGTERM');
    const watched = await watch;
    assert.match(watched.out, /vcpu=1 affinity#2 type 7 raw=c/, watched.out);
    // bpf map-set: an integer is the map's size little-endian, hex: is bytes as given.
    const h = ((await apiJson(r.sock, 'PUT', '/bpf/programs', { builtin: 'prio' })) as { handle: number }).handle;
    const set = await cli(() => cmdBpf(['map-set', ...sock, String(h), 'config', '0', 'hex:0100000005000000']));
    assert.match(set.out, new RegExp(`handle ${h} map config: \\[00000000\\] = 0100000005000000`));
    await cli(() => cmdBpf(['map-set', ...sock, String(h), 'config', '0', '5']));
    assert.equal(pv.mapWrites, [`${h} config 00000000=0100000005000000`, `${h} config 00000000=0500000000000000`]);
    const refused = await cmdBpf(['map-set', ...sock, String(h), 'config', '0', 'five']).then(() => null, (e: unknown) => e);
    assert.ok(refused instanceof UsageError && /neither an integer nor hex/.test(refused.message), String(refused));
    assert.is(pv.mapWrites.length, 2, 'a bad value is refused before any request');
    // vcpu sched / pause / resume and halt-poll: the actuators change, the table says who set it.
    const sched = await cli(() => cmdVcpu(['sched', ...sock, '1', '--policy', 'fifo', '--priority', '7']));
    assert.equal(m.fake.threads.get(1001), { policy: 1, priority: 7, nice: 0 });
    assert.match(sched.out, /^1\s+1001\s+fifo 7\s+operator\s+running/m);
    assert.match((await cli(() => cmdVcpu(['pause', ...sock, '0']))).out, /^0\s+\d+\s+\S+\s+\S+\s+paused/m);
    assert.is(m.fake.paused[0], true);
    await cli(() => cmdVcpu(['resume', ...sock, '0']));
    assert.is(m.fake.paused[0], false);
    assert.match((await cli(() => cmdHaltPoll([...sock, '0']))).out, /halt polling: 0 ns \(set by tsvmm\)/);
    assert.is(m.fake.haltPoll.ns, 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await r.close();
  }
});

test.run();
