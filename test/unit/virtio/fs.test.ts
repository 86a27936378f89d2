// virtio-fs over vhost-user, without KVM: a simulated Linux driver brings the device up through
// the virtio-mmio registers, and the rings reach an in-process back-end (over a socketpair) at
// the host addresses of the guest's ring memory; the mount tag in config space; InterruptStatus
// keeps its used-buffer bit through the driver's ACKs (the back-end's irqfd sets nothing);
// a reset takes the rings back. And the real virtiofsd's lifecycle where it can run (root).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as libc from '../../../kvm/libc';
import { serveShared } from '../../../vmm/vcpu/shared';
import { Channel } from '../../../devices/virtio/vhost-user/channel';
import { VhostUserFrontend } from '../../../devices/virtio/vhost-user/frontend';
import { REQUEST, requestName } from '../../../devices/virtio/vhost-user/messages';
import { VirtioFs, VirtioFsConfig, encodeTag } from '../../../devices/virtio/fs/device';
import { Virtiofsd, findVirtiofsd, virtiofsdArgs } from '../../../devices/virtio/fs/daemon';
import { INT_CONFIG_CHANGE, INT_USED_BUFFER, MmioTransport, REG, STATUS } from '../../../devices/virtio/mmio';
import { VIRTIO_F_VERSION_1 } from '../../../devices/virtio/device';
import { CountingIrq, SimDriver, fakeMemory, layoutQueue } from './sim';
import { FakeBackend } from '../vhost-user/fake-backend';
import { needs } from '../../needs';

const HOST_BASE = 0x7f00_0000_0000n; // where the fake RAM pretends to live in this process

async function rig() {
  const fake = fakeMemory();
  const [a, b] = libc.socketpair();
  const backend = new FakeBackend(b);
  const channel = new Channel(a, 'fake virtiofsd');
  const frontend = new VhostUserFrontend(channel, 'fake virtiofsd');
  await frontend.init();
  const kickFds = [libc.eventfd(), libc.eventfd()];
  const callFd = libc.eventfd();
  const memFd = libc.memfdCreate('fake-ram', 0x1000);
  const logs: string[] = [];
  const dev = new VirtioFs({
    tag: 'share0', frontend, kickFds, callFd, log: (m) => logs.push(m),
    memory: {
      regions: [{ guestPhysAddr: 0, size: 0x40000, userAddr: HOST_BASE, fd: memFd, fdOffset: 0 }],
      hostAddress: (gpa, len) => (gpa + len <= 0x40000 ? HOST_BASE + BigInt(gpa) : undefined),
    },
  });
  const irq = new CountingIrq();
  const t = new MmioTransport(dev, fake.mem, irq, { backendInterrupts: true });
  const drv = new SimDriver(t, fake);
  const done = () => {
    channel.close();
    backend.close();
    for (const f of [...kickFds, callFd, memFd]) libc.close(f);
  };
  return { fake, backend, dev, t, drv, kickFds, callFd, logs, done };
}

test('config space holds the tag and one request queue; features are the back-end\'s', async () => {
  const r = await rig();
  try {
    const cfg = new Uint8Array(VirtioFsConfig.size);
    for (let off = 0; off < cfg.length; off += 4) r.t.read(REG.Config + off, cfg.subarray(off, off + 4));
    const c = VirtioFsConfig.read(cfg);
    assert.is(Buffer.from(c.tag).toString('utf8').replace(/\0+$/, ''), 'share0');
    assert.is(c.numRequestQueues, 1);
    assert.is(r.drv.r32(REG.DeviceID), 26);
    // vhost-user's own bits (PROTOCOL_FEATURES 30, LOG_ALL 26) are not offered to the driver.
    r.drv.w32(REG.DeviceFeaturesSel, 0);
    assert.is(r.drv.r32(REG.DeviceFeatures) & ((1 << 30) | (1 << 26)), 0);
    assert.throws(() => encodeTag('x'.repeat(37)), /1\.\.36 bytes/);
  } finally {
    r.done();
  }
});

test('DRIVER_OK hands both rings over at their host addresses with the kick and call fds', async () => {
  const r = await rig();
  try {
    assert.ok(r.drv.negotiate(VIRTIO_F_VERSION_1 | (1n << 29n)));
    const q0 = layoutQueue(0x1000, 16);
    const q1 = layoutQueue(0x8000, 64);
    r.drv.setupQueue(0, q0);
    r.drv.setupQueue(1, q1);
    r.drv.driverOk();
    await r.dev.settled();
    assert.is(r.t.deviceStatus & STATUS.NEEDS_RESET, 0, r.logs.join('\n'));
    const a1 = r.backend.addr.get(1)!;
    assert.is(a1.descUserAddr, HOST_BASE + BigInt(q1.desc));
    assert.is(a1.availUserAddr, HOST_BASE + BigInt(q1.avail));
    assert.is(a1.usedUserAddr, HOST_BASE + BigInt(q1.used));
    assert.is(r.backend.addr.get(0)!.descUserAddr, HOST_BASE + BigInt(q0.desc));
    const num = r.backend.seen.filter((s) => s.request === REQUEST.SET_VRING_NUM).map((s) => new DataView(s.payload.buffer, s.payload.byteOffset).getUint32(4, true));
    assert.equal(num, [16, 64]);
    const sf = r.backend.seen.find((s) => s.request === REQUEST.SET_FEATURES)!;
    const acked = new DataView(sf.payload.buffer, sf.payload.byteOffset).getBigUint64(0, true);
    assert.is(acked & ~(1n << 30n), VIRTIO_F_VERSION_1 | (1n << 29n), 'what the driver acked (+ PROTOCOL_FEATURES)');
    // A kick on tsvmm's eventfd (what KVM's ioeventfd signals) reaches the back-end's descriptor.
    libc.eventfdSignal(r.kickFds[1]!);
    assert.is(libc.eventfdDrain(r.backend.kick.get(1)!), 1n);
    // A QueueNotify that missed the ioeventfd (a register write here) is passed on as a kick.
    r.drv.notify(0);
    assert.is(libc.eventfdDrain(r.backend.kick.get(0)!), 1n);
    libc.eventfdSignal(r.backend.call.get(0)!);
    assert.is(libc.eventfdDrain(r.callFd), 1n);
    // Reset: the rings come back (GET_VRING_BASE each).
    r.drv.w32(REG.Status, 0);
    await r.dev.settled();
    assert.equal(r.backend.requests().slice(-2).map(requestName), ['GET_VRING_BASE', 'GET_VRING_BASE']);
  } finally {
    r.done();
  }
});

test('InterruptStatus keeps the used-buffer bit through ACKs (register and vCPU-served) and resets', async () => {
  const r = await rig();
  try {
    assert.is(r.drv.r32(REG.InterruptStatus), INT_USED_BUFFER);
    r.drv.w32(REG.InterruptACK, INT_USED_BUFFER);
    assert.is(r.drv.r32(REG.InterruptStatus), INT_USED_BUFFER);
    const claim = { base: 0, len: 0x1000, shared: r.t.sharedRegisters() };
    const ack = new Uint8Array([INT_USED_BUFFER | INT_CONFIG_CHANGE, 0, 0, 0]);
    assert.ok(serveShared(claim, REG.InterruptACK, ack, true));
    const st = new Uint8Array(4);
    assert.ok(serveShared(claim, REG.InterruptStatus, st, false));
    assert.is(st[0], INT_USED_BUFFER);
    r.drv.w32(REG.Status, 0);
    assert.is(r.drv.r32(REG.InterruptStatus), INT_USED_BUFFER);
  } finally {
    r.done();
  }
});

test('a transport without backend interrupts still clears the bit on ACK', () => {
  const fake = fakeMemory();
  const t = new MmioTransport({ deviceType: 1, queueMaxSizes: [8], deviceFeatures: 0n, readConfig() {}, writeConfig() {}, activate() {}, notify() {}, reset() {} }, fake.mem, new CountingIrq());
  const claim = { base: 0, len: 0x1000, shared: t.sharedRegisters() };
  const st = new Uint8Array(4);
  serveShared(claim, REG.InterruptStatus, st, false);
  assert.is(st[0], 0);
});

test('findVirtiofsd: TSVMM_VIRTIOFSD, then PATH, then the distribution\'s places; else how to get it', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-vfsd-'));
  try {
    assert.throws(() => findVirtiofsd({ PATH: dir }, [join(dir, 'nope')]), /^virtiofsd not found \(searched PATH, .*\/nope\): install it \(Debian 13\+: apt-get install virtiofsd; Debian 12: tools\/setup.sh/);
    assert.throws(() => findVirtiofsd({ PATH: dir, TSVMM_VIRTIOFSD: join(dir, 'x') }, []), /TSVMM_VIRTIOFSD=.*is not an executable file/);
    assert.is(findVirtiofsd({ PATH: '', TSVMM_VIRTIOFSD: '/bin/sh' }, []), '/bin/sh');
    assert.is(findVirtiofsd({ PATH: dir }, ['/bin/sh']), '/bin/sh');
    assert.equal(virtiofsdArgs('c', '/s', '/d'), ['--socket-path=/s', '-o', 'source=/d', '-o', 'cache=auto', '-o', 'sandbox=chroot', '-o', 'log_level=err']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

function missingDaemon(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (virtiofsd sandboxes itself with chroot; read-only shares use a mount namespace)';
  try {
    findVirtiofsd();
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}

const alive = (pid: number) => existsSync(`/proc/${pid}`) && !/^State:\s+Z/m.test(safeRead(`/proc/${pid}/status`));
function safeRead(p: string): string {
  try {
    return readFileSync(p, 'utf8');
  } catch {
    return '';
  }
}

needs(missingDaemon())('the real virtiofsd: handshake, stop leaves no process or directory; its death is reported', async () => {
  const src = mkdtempSync(join(tmpdir(), 'tsvmm-vfsd-src-'));
  const before = readdirSync(tmpdir()).filter((d) => d.startsWith('tsvmm-virtiofs-'));
  const deaths: string[] = [];
  try {
    const { daemon, fd } = await Virtiofsd.start({ binary: findVirtiofsd(), source: src, readOnly: true, label: `${src}:/x,ro`, onDeath: (w) => deaths.push(w) });
    const ch = new Channel(fd, 'virtiofsd');
    const info = await new VhostUserFrontend(ch, 'virtiofsd').init();
    assert.ok(info.features & VIRTIO_F_VERSION_1, 'virtio 1');
    assert.ok((info.queueNum ?? 2) >= 2);
    const pid = daemon.pid!;
    assert.ok(alive(pid));
    ch.close();
    await daemon.stop();
    assert.not.ok(alive(pid));
    assert.equal(deaths, []);
    assert.equal(readdirSync(tmpdir()).filter((d) => d.startsWith('tsvmm-virtiofs-')), before);

    const second = await Virtiofsd.start({ binary: findVirtiofsd(), source: src, readOnly: false, label: `${src}:/y`, onDeath: (w) => deaths.push(w) });
    process.kill(second.daemon.pid!, 'SIGKILL');
    const t0 = Date.now();
    while (deaths.length === 0 && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 20));
    assert.match(deaths[0] ?? '', new RegExp(`^virtiofsd for share ${src}:/y \\(pid \\d+\\) killed by SIGKILL`));
    libc.close(second.fd);
    await second.daemon.stop();
  } finally {
    rmSync(src, { recursive: true, force: true });
  }
});

test.run();
