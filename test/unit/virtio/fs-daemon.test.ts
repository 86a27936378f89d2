// The whole virtio-fs data path without KVM: a simulated Linux driver brings the device up
// through the virtio-mmio registers, tsvmm's front-end hands the rings (in a memfd standing
// for guest RAM) to the real virtiofsd, and FUSE requests placed in the rings by the driver
// are answered by the daemon through guest memory: INIT, LOOKUP, OPEN and READ of a file,
// byte-exact, then a write refused on a read-only share. Kicks go to the daemon's kick fd (the
// eventfd KVM's ioeventfd would signal), completions come back on the call fd (the irqfd).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as libc from '../../../kvm/libc';
import { GuestMemory } from '../../../devices/memory';
import { Channel } from '../../../devices/virtio/vhost-user/channel';
import { VhostUserFrontend } from '../../../devices/virtio/vhost-user/frontend';
import { VirtioFs } from '../../../devices/virtio/fs/device';
import { Virtiofsd, findVirtiofsd } from '../../../devices/virtio/fs/daemon';
import { MmioTransport, STATUS } from '../../../devices/virtio/mmio';
import { VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1 } from '../../../devices/virtio/device';
import { CountingIrq, Rings, SimDriver, layoutQueue, type FakeMemory } from './sim';
import { needs } from '../../needs';

const RAM = 0x10_0000;
const IN = 0x20000;
const OUT = 0x40000;
const FUSE = { LOOKUP: 1, OPEN: 14, READ: 15, INIT: 26, CREATE: 35 } as const;

function missingDaemon(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (virtiofsd sandboxes itself with chroot; read-only shares use a mount namespace)';
  try {
    findVirtiofsd();
    return undefined;
  } catch (e) {
    return (e as Error).message;
  }
}

/** fuse_in_header (40 bytes) + body. */
function fuseRequest(opcode: number, unique: number, nodeid: number, body: Uint8Array): Uint8Array {
  const b = new Uint8Array(40 + body.length);
  const v = new DataView(b.buffer);
  v.setUint32(0, b.length, true);
  v.setUint32(4, opcode, true);
  v.setBigUint64(8, BigInt(unique), true);
  v.setBigUint64(16, BigInt(nodeid), true);
  b.set(body, 40);
  return b;
}

needs(missingDaemon())('FUSE requests in the rings are answered by the real virtiofsd through shared memory', async () => {
  const src = mkdtempSync(join(tmpdir(), 'tsvmm-fsd-'));
  const content = randomBytes(5000);
  writeFileSync(join(src, 'hello'), content);
  const memFd = libc.memfdCreate('guest-ram', RAM);
  const addr = libc.mmap(RAM, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, memFd);
  const backing = new Uint8Array(libc.view(addr, RAM));
  const fake: FakeMemory = { mem: new GuestMemory([{ gpa: 0, bytes: backing }]), backing, holeIntact: () => true, inRam: () => true };
  const kickFds = [libc.eventfd(), libc.eventfd()];
  const callFd = libc.eventfd();
  const deaths: string[] = [];
  const { daemon, fd } = await Virtiofsd.start({ binary: findVirtiofsd(), source: src, readOnly: true, label: `${src}:/m,ro`, onDeath: (w) => deaths.push(w) });
  const channel = new Channel(fd, 'virtiofsd');
  try {
    const frontend = new VhostUserFrontend(channel, 'virtiofsd');
    await frontend.init();
    const logs: string[] = [];
    const dev = new VirtioFs({
      tag: 'm', frontend, kickFds, callFd, log: (m) => logs.push(m),
      memory: { regions: [{ guestPhysAddr: 0, size: RAM, userAddr: addr, fd: memFd, fdOffset: 0 }], hostAddress: (g, l) => (g + l <= RAM ? addr + BigInt(g) : undefined) },
    });
    const t = new MmioTransport(dev, fake.mem, new CountingIrq(), { backendInterrupts: true });
    const drv = new SimDriver(t, fake);
    assert.ok(drv.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX), 'features accepted');
    drv.setupQueue(0, layoutQueue(0x1000, 16));
    const lay1 = layoutQueue(0x4000, 64);
    const q1 = new Rings(fake, lay1);
    q1.clear();
    drv.setupQueue(1, lay1);
    drv.driverOk();
    await dev.settled();
    assert.is(t.deviceStatus & STATUS.NEEDS_RESET, 0, `${t.lastError} ${logs.join(' ')}`);

    let unique = 1;
    const call = async (opcode: number, nodeid: number, body: Uint8Array, outLen: number) => {
      const req = fuseRequest(opcode, unique, nodeid, body);
      backing.set(req, IN);
      backing.fill(0, OUT, OUT + outLen);
      const usedBefore = q1.usedIdx;
      const head = q1.addChain([{ addr: IN, len: req.length }, { addr: OUT, len: outLen, write: true }]);
      q1.pushAvail(head);
      drv.notify(1); // a QueueNotify that reaches tsvmm goes on to the kick fd
      // Completion = the call fd signalled and the used ring advanced (libvhost-user also
      // signals the call fd once when it is handed over, with nothing used).
      const t0 = Date.now();
      let called = false;
      while (!(called && q1.usedIdx !== usedBefore)) {
        if (libc.eventfdDrain(callFd) > 0n) called = true;
        else if (Date.now() - t0 > 10_000) throw new Error(`no completion for opcode ${opcode} within 10 s (${deaths.join(' ')})`);
        else await new Promise((r) => setTimeout(r, 5));
      }
      const used = q1.takeUsed();
      q1.setUsedEvent(q1.usedIdx); // EVENT_IDX: interrupt me for the next one (virtqueue_enable_cb)
      assert.equal(used.map((u) => u.id), [head]);
      const v = new DataView(backing.buffer, backing.byteOffset + OUT, outLen);
      assert.is(Number(v.getBigUint64(8, true)), unique++, 'reply to this request');
      return { error: v.getInt32(4, true), len: v.getUint32(0, true), body: backing.slice(OUT + 16, OUT + used[0]!.len) };
    };

    const init = new Uint8Array(64);
    new DataView(init.buffer).setUint32(0, 7, true);
    new DataView(init.buffer).setUint32(4, 31, true);
    new DataView(init.buffer).setUint32(8, 0x20000, true);
    const r0 = await call(FUSE.INIT, 0, init, 16 + 64);
    assert.is(r0.error, 0);
    assert.is(new DataView(r0.body.buffer).getUint32(0, true), 7, 'FUSE major 7');

    const r1 = await call(FUSE.LOOKUP, 1, Buffer.from('hello\0'), 16 + 128);
    assert.is(r1.error, 0);
    const entry = new DataView(r1.body.buffer);
    const nodeid = Number(entry.getBigUint64(0, true));
    assert.is(Number(entry.getBigUint64(40 + 8, true)), content.length, 'attr.size'); // fuse_entry_out: 40 bytes, then fuse_attr {ino, size, ...}

    const openIn = new Uint8Array(8); // flags O_RDONLY
    const r2 = await call(FUSE.OPEN, nodeid, openIn, 16 + 16);
    assert.is(r2.error, 0);
    const fh = new DataView(r2.body.buffer).getBigUint64(0, true);

    const readIn = new DataView(new ArrayBuffer(40));
    readIn.setBigUint64(0, fh, true);
    readIn.setBigUint64(8, 0n, true);
    readIn.setUint32(16, 8192, true);
    const r3 = await call(FUSE.READ, nodeid, new Uint8Array(readIn.buffer), 16 + 8192);
    assert.is(r3.error, 0);
    assert.ok(Buffer.from(r3.body).equals(content), 'file bytes through guest memory');

    // CREATE on the read-only share: the host's read-only bind mount answers EROFS (-30).
    const create = new Uint8Array(16 + 6);
    new DataView(create.buffer).setUint32(0, 0o102, true); // O_CREAT | O_RDWR
    new DataView(create.buffer).setUint32(4, 0o644, true);
    create.set(Buffer.from('new\0\0\0').subarray(0, 4), 16);
    const r4 = await call(FUSE.CREATE, 1, create.subarray(0, 20), 16 + 160);
    assert.is(r4.error, -30);
    assert.equal(deaths, []);
  } finally {
    channel.close();
    await daemon.stop();
    for (const f of [...kickFds, callFd]) libc.close(f);
    libc.munmap(addr, RAM);
    libc.close(memFd);
    rmSync(src, { recursive: true, force: true });
  }
});

test.run();
