// A pure-Node microbenchmark of the vsock data path (device + muxer + csm + queue.ts), no KVM:
// the simulated guest of sim.ts (Linux 6.1 buffer shapes: 4 KiB RX buffers with the header in
// its own descriptor, 64 KiB TX packets) against real Unix sockets. It measures what tsvmm's main
// thread costs per byte and per packet, not what a real guest does; the sim's own work (ring
// writes, copies) is included. Three phases: host->guest, guest->host, and the concurrent echo. Not a test (no *.test.ts): build and run it by hand:
//
//   npx esbuild test/unit/vsock/bench.ts --bundle --platform=node --format=esm --outfile=dist/vsock-bench.mjs
//   node dist/vsock-bench.mjs [MiB per direction, default 32]   (add --cpu-prof to profile)
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VirtioVsock } from '../../../devices/virtio/vsock/device';
import { SimGuest, until } from './sim';

const MIB = Number(process.argv[2] ?? 32);
const SIZE = MIB * 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'tsvmm-vsock-bench-'));

async function world() {
  const uds = join(dir, `v${Math.random().toString(36).slice(2)}.sock`);
  const dev = await VirtioVsock.create({ guestCid: 3, udsPath: uds });
  const g = new SimGuest(dev, { cid: 3, rxSplitHeader: true });
  let notifies = 0;
  const notify = dev.notify.bind(dev);
  dev.notify = (i: number) => { notifies++; notify(i); };
  g.start(128); // 2 descriptors each: a full 256-entry ring, as Linux fills it
  return { uds, dev, g, notifies: () => notifies };
}

function report(what: string, secs: number, cpu: NodeJS.CpuUsage, w: Awaited<ReturnType<typeof world>>): void {
  const c = w.dev.counters;
  const cpuSecs = (cpu.user + cpu.system) / 1e6;
  console.log(`${what}: ${(MIB / secs).toFixed(1)} MiB/s (${MIB} MiB in ${secs.toFixed(2)} s, CPU ${cpuSecs.toFixed(2)} s), ` +
    `rx packets ${c.rxPackets} (${Math.round(c.rxPackets / secs)}/s), tx packets ${c.txPackets}, ` +
    `interrupts rx/tx ${w.g.irqs[0]}/${w.g.irqs[1]}, guest notifies ${w.notifies()}`);
}

async function hostToGuest(): Promise<void> {
  const w = await world();
  let got = 0;
  w.g.listen(5001, (c) => { c.onData = (d) => { got += d.length; c.received.length = 0; }; });
  const s = net.connect(w.uds);
  s.write('CONNECT 5001\n');
  await new Promise<void>((r) => s.once('data', () => r()));
  const data = randomBytes(SIZE);
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  s.write(data);
  await until(() => got === SIZE, 'host->guest', 600_000);
  report('host->guest', (performance.now() - t0) / 1000, process.cpuUsage(cpu0), w);
  s.destroy();
  await w.dev.close();
}

async function guestToHost(): Promise<void> {
  const w = await world();
  let got = 0;
  const srv = net.createServer((s) => s.on('data', (d: Buffer) => { got += d.length; }));
  await new Promise<void>((r) => srv.listen(`${w.uds}_5002`, r));
  const c = await w.g.connect(5002);
  const data = randomBytes(SIZE);
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  await w.g.write(c, data, 64 * 1024);
  await until(() => got === SIZE, 'guest->host', 600_000);
  report('guest->host', (performance.now() - t0) / 1000, process.cpuUsage(cpu0), w);
  srv.close();
  await w.dev.close();
}

// The concurrent echo of tools/bench/vsock.mjs: the guest connects to host port 5003 and writes
// back each packet as it arrives; the host streams ECHO_MIB while reading the echo back.
async function echo(): Promise<void> {
  const w = await world();
  const size = Math.min(SIZE, 8 * 1024 * 1024);
  const data = randomBytes(size);
  let back = 0;
  let t0 = 0;
  let cpu0 = process.cpuUsage();
  const srv = net.createServer((s) => {
    s.on('data', (d: Buffer) => { back += d.length; });
    t0 = performance.now();
    cpu0 = process.cpuUsage();
    s.write(data);
  });
  await new Promise<void>((r) => srv.listen(`${w.uds}_5003`, r));
  const c = await w.g.connect(5003);
  // One writer at a time, in arrival order (the sim's write awaits credit and ring slots).
  let chain = Promise.resolve();
  c.onData = (d) => { chain = chain.then(() => w.g.write(c, d, 64 * 1024)); };
  await until(() => back === size, 'echo', 600_000);
  const secs = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  console.log(`echo (${size / 1048576} MiB): ${(size / 1048576 / secs).toFixed(1)} MiB/s (CPU ${((cpu.user + cpu.system) / 1e6).toFixed(2)} s), ` +
    `rx packets ${w.dev.counters.rxPackets}, tx packets ${w.dev.counters.txPackets}, interrupts rx/tx ${w.g.irqs[0]}/${w.g.irqs[1]}, guest notifies ${w.notifies()}`);
  srv.close();
  await w.dev.close();
}

await hostToGuest();
await guestToHost();
await echo();
rmSync(dir, { recursive: true, force: true });
