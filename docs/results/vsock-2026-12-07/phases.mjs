#!/usr/bin/env node
// Splits the per-second device counters of a vsock bench job (job.sh's TAG-runs-metrics.jsonl or
// TAG-metrics.jsonl: every tsvmm run appends one JSON line a second) into runs and each run into
// its three phases, and prints each phase's counter deltas: host->guest (bytesToGuest grows,
// bytesFromGuest does not), guest->host (the other way), echo (both, after guest->host).
//
//   node docs/results/vsock-2026-12-07/phases.mjs FILE.jsonl [--json]
//
// Session 12 added the TX turns (txBatches / txBatchUs) and the RX fill's time per packet; the
// counters an older VMM's JSON lacks read as 0, so session 11's files (d1-*) still split.
//
// A phase's edges fall on whole seconds, so its deltas include up to a second of its neighbours'.
import { readFileSync } from 'node:fs';

const [file, flag] = process.argv.slice(2);
if (!file) {
  console.error('usage: phases.mjs FILE.jsonl [--json]');
  process.exit(2);
}
const KEYS = [
  'rxPackets', 'txPackets', 'rxDataFull', 'rxDataShortCredit', 'rxDataShortData', 'creditStalls', 'creditStallUs',
  'creditHopUs', 'rxBatches', 'rxBatchUs', 'rxNoBuffer', 'rxNoBufferUs', 'txBatches', 'txBatchUs', 'bytesToGuest', 'bytesFromGuest',
];
const lines = readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
const sample = (m) => {
  const v = m.vsock ?? {};
  const t = m.transports?.['virtio-vsock'] ?? {};
  const s = { t: m.utc_timestamp_ms, interrupts: t.interrupts ?? 0, coalesced: t.interruptsCoalesced ?? 0, notifications: t.notifications ?? 0 };
  for (const k of KEYS) s[k] = v[k] ?? 0;
  return s;
};

// Runs: the counters start again from zero (a new VMM) or the clock jumps back.
const runs = [];
let cur;
for (const m of lines) {
  const s = sample(m);
  const prev = cur?.at(-1);
  if (!prev || s.bytesToGuest < prev.bytesToGuest || s.rxPackets < prev.rxPackets || s.t < prev.t) runs.push((cur = []));
  cur.push(s);
}

const delta = (a, b) => {
  const d = {};
  for (const k of ['t', 'interrupts', 'coalesced', 'notifications', ...KEYS]) d[k] = b[k] - a[k];
  return d;
};
const MIB = 1024 * 1024;
const out = [];
for (const [i, r] of runs.entries()) {
  // Phase edges: the last sample before each direction starts moving, the first after it stops.
  const phases = { h2g: [], g2h: [], echo: [] };
  let phase;
  for (let j = 1; j < r.length; j++) {
    const d = delta(r[j - 1], r[j]);
    if (d.bytesToGuest > 0 && d.bytesFromGuest > 64 * 1024) phase = 'echo';
    else if (d.bytesFromGuest > 64 * 1024 && phase !== 'echo') phase = 'g2h';
    else if (d.bytesToGuest > 64 * 1024 && phase === undefined) phase = 'h2g';
    else if (d.bytesToGuest === 0 && d.bytesFromGuest === 0) continue;
    if (phase) phases[phase].push(j);
  }
  const res = { run: i + 1 };
  for (const [name, idx] of Object.entries(phases)) {
    if (!idx.length) continue;
    const d = delta(r[idx[0] - 1], r[idx.at(-1)]);
    const secs = d.t / 1000;
    res[name] = {
      secs, mib: +((d.bytesToGuest + d.bytesFromGuest) / MIB).toFixed(1), ...d,
      perStallMs: d.creditStalls ? +(d.creditStallUs / d.creditStalls / 1000).toFixed(2) : 0,
      perHopMs: d.creditStalls ? +(d.creditHopUs / d.creditStalls / 1000).toFixed(2) : 0,
      perBatchMs: d.rxBatches ? +(d.rxBatchUs / d.rxBatches / 1000).toFixed(2) : 0,
      pktsPerBatch: d.rxBatches ? +(d.rxPackets / d.rxBatches).toFixed(1) : 0,
      fillUsPerPkt: d.rxPackets ? +(d.rxBatchUs / d.rxPackets).toFixed(1) : 0,
      perTxBatchMs: d.txBatches ? +(d.txBatchUs / d.txBatches / 1000).toFixed(2) : 0,
      txShare: secs ? +(d.txBatchUs / 1e6 / secs).toFixed(2) : 0,
      stallShare: secs ? +(d.creditStallUs / 1e6 / secs).toFixed(2) : 0,
      batchShare: secs ? +(d.rxBatchUs / 1e6 / secs).toFixed(2) : 0,
      noBufferShare: secs ? +(d.rxNoBufferUs / 1e6 / secs).toFixed(2) : 0,
    };
  }
  out.push(res);
}
if (flag === '--json') console.log(JSON.stringify(out, null, 1));
else {
  for (const r of out) {
    for (const p of ['h2g', 'g2h', 'echo']) {
      const d = r[p];
      if (!d) continue;
      console.log(`run ${r.run} ${p}: ${d.secs}s ${d.mib} MiB; rx ${d.rxPackets} (full ${d.rxDataFull}, short credit ${d.rxDataShortCredit}, short data ${d.rxDataShortData}), tx ${d.txPackets}; ` +
        `stalls ${d.creditStalls} (${d.perStallMs} ms each, ${d.stallShare} of the time; our hop ${d.perHopMs} ms); ` +
        `batches ${d.rxBatches} (${d.pktsPerBatch} pkts, ${d.perBatchMs} ms each, ${d.fillUsPerPkt} us a packet, ${d.batchShare} of the time); ` +
        `tx turns ${d.txBatches} (${d.perTxBatchMs} ms each, ${d.txShare} of the time); ` +
        `no RX buffer ${d.rxNoBuffer} (${d.noBufferShare} of the time); irqs ${d.interrupts} (+${d.coalesced} merged), kicks ${d.notifications}`);
    }
  }
}
