// The benchmark report's content: turns the JSON files of the benchmarks (boot.mjs, exec.mjs,
// vsock.mjs, blk.mjs, virtiofs.mjs, serial.mjs, dist/bench/exits.js, dist/bench/hints.js,
// dist/bench/prio.js) into one list of metrics — tsvmm's value, its peer's, tsvmm's relative
// performance and, where an issue set one, the goal for it — and renders that as Markdown and
// two charts. Pure functions plus renderCharts; report.mjs runs the benchmarks and writes the
// files. The relative performance is oriented so that 1 is parity and above 1 means tsvmm did
// better: peer/tsvmm for times, tsvmm/peer for rates.
import { renderVegaLite } from './chart.mjs';
import { stats } from './lib.mjs';

export const BENCHES = ['boot', 'exec', 'vsock', 'blk', 'virtiofs', 'serial', 'exits', 'hints', 'prio'];

// prio.js compares tsvmm with itself: the same guest and load, the host's priority policy off.
const PRIO_PEER = 'tsvmm --prio none (policy off)';

// The seed paper's prototype polled its guest-side hint source every 50 ms. Not measured here:
// a reference shown next to the hint latency, never turned into a ratio.
const PROTOTYPE_POLL_MS = 50;

const s = (x) => (x ? { median: x.median, min: x.min, max: x.max, n: x.n } : null);
const scale = (x, k) => (x ? { ...x, median: x.median * k, min: x.min * k, max: x.max * k } : null);
const one = (v) => (v == null ? null : { median: v, min: v, max: v, n: 1 });
/** A percentile of hints.js's per-sample latencies, with their range and count. */
const latency = (l, p) => (l?.[p] == null ? null : { median: l[p], min: l.min, max: l.max, n: l.n });

/**
 * A goal set by an issue, in the issue's own terms: `time` bounds tsvmm's time over the peer's
 * (≤ x), `speed` the relative column (≥ x), `excess` tsvmm's value minus the peer's (≤ x, in the
 * metric's unit).
 */
const goal = (kind, threshold, text) => ({ kind, threshold, text });

/** One row; a `reference` peer (not measured the same way, or not at all) is shown but gives no ratio. */
function metric(bench, name, unit, better, tsvmm, peerName, peer, reference = false, target = null) {
  let relative = null;
  if (!reference && tsvmm?.median && peer?.median) relative = better === 'lower' ? peer.median / tsvmm.median : tsvmm.median / peer.median;
  return { bench, metric: name, unit, better, tsvmm, peerName, peer, reference, relative, goal: target };
}

/** A metric's value in its goal's terms, and whether the goal is met (null, false without a peer). */
export function goalValue(m) {
  const g = m.goal;
  if (!g) return { value: null, met: false };
  let value = null;
  if (g.kind === 'excess') value = m.tsvmm?.median != null && m.peer?.median != null ? m.tsvmm.median - m.peer.median : null;
  else if (m.relative != null) value = g.kind === 'time' ? 1 / m.relative : m.relative;
  return { value, met: value != null && (g.kind === 'speed' ? value >= g.threshold : value <= g.threshold) };
}

/** The metrics of one benchmark's JSON (as that benchmark writes it); [] if it has none. */
export function metricsOf(bench, j) {
  if (!j) return [];
  const sm = j.summary ?? {};
  switch (bench) {
    case 'boot':
      return [
        metric('boot', 'boot to init ready', 's', 'lower', scale(s(sm.tsvmm?.readyMs), 1e-3), 'QEMU microvm', scale(s(sm.qemu?.readyMs), 1e-3), false,
          goal('time', 0.7, 'tsvmm/QEMU time ≤ 0.7 (issue 16)')),
        metric('boot', 'VMM RSS at init ready', 'MiB', 'lower', s(sm.tsvmm?.rssMiB), 'QEMU microvm', s(sm.qemu?.rssMiB), false,
          goal('excess', 20, 'tsvmm − QEMU ≤ 20 MiB (issue 16)')),
      ].filter((m) => m.tsvmm);
    case 'exec':
      // The round trip against QEMU running `true` from its init; its parts have no peer.
      return [
        metric('exec', 'exec round trip for `true` (spawn → exit)', 's', 'lower', scale(s(sm.tsvmm?.wallMs), 1e-3), 'QEMU microvm, init runs `true`', scale(s(sm.qemu?.wallMs), 1e-3)),
        ...[['nodeMs', 'Node start'], ['bootMs', 'boot to init ready'], ['agentMs', 'agent handshake'], ['commandMs', 'command'], ['teardownMs', 'teardown']]
          .map(([k, name]) => metric('exec', `exec: ${name}`, 's', 'lower', scale(s(sm.tsvmm?.[k]), 1e-3), null, null)),
      ].filter((m) => m.tsvmm);
    case 'vsock':
      return [
        metric('vsock', 'host→guest stream', 'MiB/s', 'higher', s(sm.tsvmm?.h2gMibS), 'QEMU vhost-vsock', s(sm.qemu?.h2gMibS), false, goal('speed', 0.8, '≥ 0.8× vhost-vsock (issue 16)')),
        metric('vsock', 'guest→host stream', 'MiB/s', 'higher', s(sm.tsvmm?.g2hMibS), 'QEMU vhost-vsock', s(sm.qemu?.g2hMibS), false, goal('speed', 0.8, '≥ 0.8× vhost-vsock (issue 16)')),
        // The host streams while it reads the guest's echo back: both directions at once (not in
        // vsock.mjs's JSON before 2026-12-07, hence optional).
        metric('vsock', 'concurrent echo (host streams, reads the echo back)', 'MiB/s', 'higher', s(sm.tsvmm?.echoMibS), 'QEMU vhost-vsock', s(sm.qemu?.echoMibS), false, goal('speed', 0.8, '≥ 0.8× vhost-vsock (issue 16)')),
      ].filter((m) => m.tsvmm || !m.metric.startsWith('concurrent echo'));
    case 'blk':
      // O_DIRECT in the guest, the same raw image for both (blk.mjs's keys: op-blocksize).
      return [['read-4k', 'read, 4 KiB blocks'], ['read-1m', 'read, 1 MiB blocks'], ['write-4k', 'write, 4 KiB blocks'], ['write-1m', 'write, 1 MiB blocks']]
        .map(([k, name]) => metric('blk', `virtio-blk ${name}`, 'MiB/s', 'higher', s(sm.tsvmm?.[k]), 'QEMU virtio-blk-device', s(sm.qemu?.[k]), false, goal('speed', 0.8, '≥ 0.8× QEMU (issue 14)')))
        .filter((m) => m.tsvmm);
    case 'virtiofs':
      // The same virtiofsd serving the same directory to both.
      return [
        metric('virtiofs', 'virtio-fs sequential read', 's', 'lower', scale(s(sm.tsvmm?.readMs), 1e-3), 'QEMU vhost-user-fs-device', scale(s(sm.qemu?.readMs), 1e-3), false, goal('speed', 0.9, 'speed ≥ 0.9× QEMU (issue 14)')),
        metric('virtiofs', 'virtio-fs metadata walk (ls -lR)', 's', 'lower', scale(s(sm.tsvmm?.statMs), 1e-3), 'QEMU vhost-user-fs-device', scale(s(sm.qemu?.statMs), 1e-3), false, goal('speed', 0.9, 'speed ≥ 0.9× QEMU (issue 14)')),
      ].filter((m) => m.tsvmm);
    case 'serial':
      return [metric('serial', 'guest writing to ttyS0', 'KiB/s', 'higher', s(sm.tsvmm?.guestKiBps), 'QEMU microvm', s(sm.qemu?.guestKiBps), false, goal('speed', 1, '≥ 1.0× QEMU (issue 16)'))].filter((m) => m.tsvmm);
    case 'exits':
      return [
        metric('exits', 'port exits handled on the vCPU thread', 'exits/s', 'higher', s(sm.local?.exitsPerSec), 'C twin', s(sm.c?.exitsPerSec)),
        // Its peer hands every exit to a second C thread through a futex (exit-loop --forward).
        metric('exits', 'port exits forwarded to the main thread', 'exits/s', 'higher', s(sm.forwarded?.exitsPerSec), 'C twin forwarding to a 2nd thread', s(sm['c-forwarded']?.exitsPerSec), false,
          goal('speed', 0.5, '≥ 0.5× the C twin (issue 16)')),
      ].filter((m) => m.tsvmm);
    case 'hints':
      return [
        metric('hints', 'guest setaffinity return → host setaffinity return, p50 (min..max)', 'ms', 'lower', latency(j.latencyMs, 'p50'), `prototype polled every ${PROTOTYPE_POLL_MS} ms (reference)`, one(PROTOTYPE_POLL_MS), true),
        metric('hints', 'guest setaffinity return → host setaffinity return, p95', 'ms', 'lower', latency(j.latencyMs, 'p95'), null, null),
        metric('hints', 'VM exits per hint record (flood)', 'exits', 'lower', one(j.flood?.exitsPerHint), null, null),
        metric('hints', 'hint records per second (flood)', 'records/s', 'higher', one(j.flood?.recordsPerSecond), null, null),
      ];
    case 'prio': {
      // The guest's own wake-up latency per run (µs); medians (min..max) over the runs per mode.
      // tsvmm's column is --prio hinted, the peer --prio none: the relative column (none/hinted)
      // is above 1 when the policy helps; the goal itself (hinted/none p99 < 1) is in goals().
      const runs = Array.isArray(j.runs) ? j.runs : [];
      const of = (mode, f) => {
        const v = stats(runs.filter((r) => r.mode === mode).map(f).filter(Number.isFinite));
        return v.n ? v : null;
      };
      // The host's side of the same interval: how long the vCPU 1 thread sat runnable without a
      // CPU, per guest wake-up (schedstat run_delay; recorded by prio.js since the first run).
      const waited = (r) => (r.host && r.samples ? r.host.runDelayMs / r.samples : NaN);
      return [
        metric('prio', 'guest real-time task wake-up latency under host load, p50, --prio hinted', 'µs', 'lower', of('hinted', (r) => r.p50), PRIO_PEER, of('none', (r) => r.p50)),
        metric('prio', 'guest real-time task wake-up latency under host load, p99, --prio hinted', 'µs', 'lower', of('hinted', (r) => r.p99), PRIO_PEER, of('none', (r) => r.p99)),
        metric('prio', 'host: vCPU 1 thread runnable without a CPU, per guest wake-up, --prio hinted', 'ms', 'lower', of('hinted', waited), PRIO_PEER, of('none', waited), true),
        metric('prio', 'guest periods missed (overruns), --prio hinted', 'periods', 'lower', of('hinted', (r) => r.overruns), PRIO_PEER, of('none', (r) => r.overruns), true),
      ].filter((m) => m.tsvmm || m.peer);
    }
    default:
      return [];
  }
}

/**
 * Every goal of the report's metrics (issues 14 and 16: ratios against the peer), then the
 * priority policy's "hinted lowers p99" (prio.js: median p99 of the hinted runs over the median
 * p99 of the none runs, below 1), with the vCPU thread's class as the host applied it in the
 * hinted runs (a hinted run whose vCPU thread never became real time cannot show the policy's
 * effect).
 */
export function goals(record) {
  const ratios = reportMetrics(record).filter((m) => m.goal).map((m) => ({ bench: m.bench, goal: `${m.metric}: ${m.goal.text}`, ...goalValue(m), note: m.peer ? '' : 'no peer value' }));
  return [...ratios, ...prioGoal(record)];
}

function prioGoal(record) {
  const j = record.benches.prio?.result;
  if (!j) return [];
  const p99 = metricsOf('prio', j).find((m) => m.metric.includes(', p99,'));
  const ratio = p99?.tsvmm?.median != null && p99.peer?.median ? p99.tsvmm.median / p99.peer.median : null;
  const classes = (mode) => [...new Set((Array.isArray(j.runs) ? j.runs : []).filter((r) => r.mode === mode).map((r) => r.vcpuClass))].join(', ') || '–';
  return [{
    bench: 'prio', goal: 'hinted lowers p99 (hinted/none p99 < 1)', value: ratio, met: ratio != null && ratio < 1,
    note: `vCPU 1 thread while the task ran: ${classes('hinted')} (hinted), ${classes('none')} (none)`,
  }];
}

/** Every metric of a report record ({ benches: { name: { status, result } } }), in BENCHES order. */
export function reportMetrics(record) {
  return BENCHES.flatMap((b) => metricsOf(b, record.benches[b]?.result));
}

const num = (x) => {
  if (x == null || !Number.isFinite(x)) return '–';
  const a = Math.abs(x);
  return a >= 1000 ? Math.round(x).toLocaleString('en-US') : a >= 10 ? x.toFixed(1) : x.toFixed(2);
};
const range = (v) => (v ? (v.n > 1 ? `${num(v.median)} (${num(v.min)}..${num(v.max)})` : num(v.median)) : '–');

function machineRows(m) {
  if (!m) return [];
  return [
    ['CPU', `${m.cpu} — ${m.cpus} logical CPUs, ${m.cores} cores`],
    ['memory', `${m.memoryGiB} GiB`],
    ['OS, kernel', `${m.os}, Linux ${m.kernel}`],
    ['KVM', m.nestedSandbox ? `${m.kvm} (nested, on QEMU's emulated SVM)` : m.hardwareKvm ? `${m.kvm} (hardware)` : `${m.kvm} (no hardware KVM)`],
    ['Node.js', m.node],
    ...(m.qemu ? [['QEMU', m.qemu]] : []),
    ['load average', m.loadavg.map((x) => x.toFixed(2)).join(' ')],
  ];
}

/** The goal column: the goal, the value in its terms, met or not. */
function goalCell(m) {
  if (!m.goal) return '';
  const { value, met } = goalValue(m);
  return `${m.goal.text}: ${value == null ? '–' : num(value)} ${met ? 'met' : '**not met**'}`;
}

/** The Markdown report. */
export function markdown(record, metrics) {
  const out = [`# tsvmm benchmark report`, '', `${record.started} → ${record.finished ?? 'unfinished'}${record.config.short ? ' · **short mode** (pipeline check, 1 run)' : ''}`, ''];
  const inner = record.machine;
  if (inner?.nestedSandbox) {
    out.push('> **Measured inside the nested sandbox** (QEMU emulating a CPU with SVM, KVM inside it): every VM exit',
      '> and instruction is emulated, so absolute numbers are 10–50× below hardware. Read the relative column.', '');
  }
  out.push('## Machine', '', '| | where the VMMs ran |' + (record.host ? ' host machine |' : ''), '|---|---|' + (record.host ? '---|' : ''));
  const hostRows = new Map(machineRows(record.host));
  for (const [k, v] of machineRows(inner)) out.push(`| ${k} | ${v} |` + (record.host ? ` ${hostRows.get(k) ?? '–'} |` : ''));
  out.push('', '## Results', '', 'Relative performance: 1 = parity with the peer, above 1 = tsvmm better (peer/tsvmm for times, tsvmm/peer for rates). Values are medians (min..max) over the runs.', '');
  out.push('| benchmark | metric | tsvmm | peer | peer value | relative | goal |', '|---|---|---:|---|---:|---:|---|');
  for (const m of metrics) {
    const rel = m.relative == null ? '–' : `${m.relative.toFixed(2)}×`;
    out.push(`| ${m.bench} | ${m.metric} (${m.unit}) | ${range(m.tsvmm)} | ${m.peerName ?? '–'} | ${range(m.peer)} | ${rel} | ${goalCell(m)} |`);
  }
  const g = goals(record);
  if (g.length) {
    out.push('', '## Goals', '', '| benchmark | goal | measured | met | |', '|---|---|---:|---|---|');
    for (const x of g) out.push(`| ${x.bench} | ${x.goal} | ${x.value == null ? '–' : x.value.toFixed(3)} | ${x.met ? 'yes' : '**no**'} | ${x.note} |`);
  }
  out.push('', '## Benchmarks', '', '| benchmark | status | seconds | command |', '|---|---|---:|---|');
  for (const b of BENCHES) {
    const r = record.benches[b];
    if (!r) continue;
    out.push(`| ${b} | ${r.status === 'ok' ? 'ok' : `**${r.status}**: ${r.error ?? ''}`} | ${r.seconds?.toFixed(0) ?? '–'} | \`${r.command.join(' ')}\` |`);
  }
  out.push('', 'Peers: boot, vsock, virtio-blk, virtio-fs and the serial port against QEMU `-M microvm -accel kvm` on the same kernel, initramfs, vCPUs and memory (vsock through', '`vhost-vsock-device`, virtio-fs through the same virtiofsd, virtio-blk on the same image); exits against a C program running the same guest code with the same KVM_RUN loop,',
    `answering each exit itself or handing it to a second thread; the hint latency next to the ${PROTOTYPE_POLL_MS} ms polling period of the paper's prototype (a reference value, not measured); the guest real-time latency`,
    'with `--prio hinted` against the same guest and host load with `--prio none`. References give no ratio. Method: docs/benchmarks.md.', '',
    '![relative performance](relative.svg)', '', '![values](values.svg)', '');
  return out.join('\n');
}

/** Horizontal bars: tsvmm's relative performance per metric that has a measured peer, with the parity line. */
export function relativeSpec(metrics, title) {
  const values = metrics.filter((m) => m.relative != null && !m.reference).map((m) => ({ what: `${m.bench}: ${m.metric}`, relative: m.relative }));
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title, width: 420, background: 'white',
    layer: [
      { data: { values }, mark: 'bar', encoding: {
        y: { field: 'what', type: 'nominal', sort: null, title: null, axis: { labelLimit: 420 } },
        x: { field: 'relative', type: 'quantitative', title: 'tsvmm relative to its peer (1 = parity, >1 = tsvmm better)' },
        color: { condition: { test: 'datum.relative >= 1', value: '#4c78a8' }, value: '#e45756' },
      } },
      { data: { values: [{ x: 1 }] }, mark: { type: 'rule', strokeDash: [4, 3], color: 'black' }, encoding: { x: { field: 'x', type: 'quantitative' } } },
    ],
  };
}

/** Small multiples, one panel per metric with a peer: median bars for tsvmm and the peer, min..max whiskers. */
export function valuesSpec(metrics, title) {
  const values = [];
  for (const m of metrics.filter((x) => x.tsvmm && x.peer && !x.reference)) {
    const panel = `${m.bench}: ${m.metric} (${m.unit})`;
    values.push({ panel, vmm: 'tsvmm', ...m.tsvmm }, { panel, vmm: m.peerName, ...m.peer });
  }
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title, background: 'white', data: { values },
    facet: { field: 'panel', type: 'nominal', title: null, sort: [...new Set(values.map((v) => v.panel))] },
    columns: 3,
    spec: {
      width: 170, height: 150,
      encoding: { x: { field: 'vmm', type: 'nominal', title: null, sort: null, axis: { labelAngle: 0, labelLimit: 160 } } },
      layer: [
        { mark: 'bar', encoding: { y: { field: 'median', type: 'quantitative', title: 'median (min..max)' }, color: { condition: { test: "datum.vmm === 'tsvmm'", value: '#4c78a8' }, value: '#f58518' } } },
        { mark: { type: 'rule', color: 'black' }, encoding: { y: { field: 'min', type: 'quantitative' }, y2: { field: 'max' } } },
      ],
    },
    resolve: { scale: { y: 'independent', x: 'independent' } },
  };
}

/** Writes relative.svg/png and values.svg/png into dir. */
export async function renderCharts(record, metrics, dir) {
  const where = record.machine?.nestedSandbox ? ' (nested sandbox)' : '';
  return [
    await renderVegaLite(relativeSpec(metrics, `tsvmm against its peers${where}`), `${dir}/relative`),
    await renderVegaLite(valuesSpec(metrics, `tsvmm and its peers, medians with min..max${where}`), `${dir}/values`),
  ];
}
