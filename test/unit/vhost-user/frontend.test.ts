// The vhost-user front-end against an in-process back-end over a real socketpair: the request
// sequence QEMU makes, memory and eventfds really handed over with SCM_RIGHTS (the back-end
// maps the memfd and sees the front-end's bytes; the eventfds it got are the same objects),
// REPLY_ACK refusals, a back-end that answers the wrong request, and one that hangs up.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as libc from '../../../kvm/libc';
import { Channel } from '../../../devices/virtio/vhost-user/channel';
import { VhostUserFrontend, type SharedRegion } from '../../../devices/virtio/vhost-user/frontend';
import { FLAG_NEED_REPLY, REQUEST, VHOST_USER_F_PROTOCOL_FEATURES, requestName } from '../../../devices/virtio/vhost-user/messages';
import { FakeBackend, FS_FEATURES, type FakeOptions } from './fake-backend';

const SIZE = 0x20_0000;

function rig(o: FakeOptions = {}) {
  const [a, b] = libc.socketpair();
  const backend = new FakeBackend(b, o);
  const channel = new Channel(a, 'fake back-end');
  const fe = new VhostUserFrontend(channel, 'fake back-end');
  const fd = libc.memfdCreate('test-ram', SIZE);
  const addr = libc.mmap(SIZE, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, fd);
  const region: SharedRegion = { guestPhysAddr: 0x1000_0000, size: SIZE, userAddr: addr, fd, fdOffset: 0 };
  const kicks = [libc.eventfd(), libc.eventfd()];
  const call = libc.eventfd();
  const rings = [0, 1].map((index) => ({
    index, size: 128, desc: addr + 0x1000n * BigInt(index + 1), avail: addr + 0x10000n, used: addr + 0x20000n, kickFd: kicks[index]!, callFd: call,
  }));
  const done = () => {
    channel.close();
    backend.close();
    for (const k of [...kicks, call, fd]) libc.close(k);
    libc.munmap(addr, SIZE);
  };
  return { backend, channel, fe, region, addr, kicks, call, rings, done };
}

async function rejects(fn: () => Promise<unknown>, re: RegExp): Promise<void> {
  try {
    await fn();
  } catch (e) {
    assert.match((e as Error).message, re);
    return;
  }
  assert.unreachable(`expected a rejection matching ${re}`);
}

const names = (rs: number[]) => rs.map(requestName);

test('init then start make QEMU\'s requests in its order, SET_MEM_TABLE and ENABLE acked', async () => {
  const r = rig();
  try {
    const info = await r.fe.init();
    assert.is(info.features, FS_FEATURES);
    assert.is(info.queueNum, 2);
    await r.fe.start(FS_FEATURES & ~VHOST_USER_F_PROTOCOL_FEATURES & ~(1n << 26n), [r.region], r.rings);
    const ring = (i: number) => ['SET_VRING_NUM', 'SET_VRING_BASE', 'SET_VRING_ADDR', 'SET_VRING_KICK', 'SET_VRING_CALL'];
    assert.equal(names(r.backend.requests()), [
      'SET_OWNER', 'GET_FEATURES', 'GET_PROTOCOL_FEATURES', 'SET_PROTOCOL_FEATURES', 'GET_QUEUE_NUM',
      'SET_FEATURES', 'SET_MEM_TABLE', ...ring(0), ...ring(1), 'SET_VRING_ENABLE', 'SET_VRING_ENABLE',
    ]);
    const setFeatures = r.backend.seen.find((s) => s.request === REQUEST.SET_FEATURES)!;
    // PROTOCOL_FEATURES goes back in SET_FEATURES, or the back-end would not expect SET_VRING_ENABLE.
    assert.is(new DataView(setFeatures.payload.buffer, setFeatures.payload.byteOffset).getBigUint64(0, true) & VHOST_USER_F_PROTOCOL_FEATURES, VHOST_USER_F_PROTOCOL_FEATURES);
    const mt = r.backend.seen.find((s) => s.request === REQUEST.SET_MEM_TABLE)!;
    assert.ok(mt.flags & FLAG_NEED_REPLY);
    // SET_PROTOCOL_FEATURES asks only for what tsvmm uses (CONFIG was offered, not taken).
    const spf = r.backend.seen.find((s) => s.request === REQUEST.SET_PROTOCOL_FEATURES)!;
    assert.is(new DataView(spf.payload.buffer, spf.payload.byteOffset).getBigUint64(0, true), 0b1001n);
    assert.equal([...r.backend.enabled].sort(), [0, 1]);
    assert.equal(r.backend.memTable, [{ guestPhysAddr: 0x1000_0000n, memorySize: BigInt(SIZE), userspaceAddr: r.addr, mmapOffset: 0n }]);
    assert.is(r.backend.addr.get(1)!.descUserAddr, r.addr + 0x2000n);
    assert.is(r.backend.addr.get(1)!.usedUserAddr, r.addr + 0x20000n);
  } finally {
    r.done();
  }
});

test('the memfd and eventfds arrive as working descriptors (SCM_RIGHTS)', async () => {
  const r = rig();
  try {
    await r.fe.init();
    const mine = new Uint8Array(libc.view(r.addr, SIZE));
    mine.set([0xde, 0xad, 0xbe, 0xef], 0x1234);
    await r.fe.start(1n << 32n, [r.region], r.rings);
    const [memFd] = r.backend.memFds;
    assert.ok(memFd !== undefined && memFd !== r.region.fd, 'a new descriptor for the same memory');
    const theirs = libc.mmap(SIZE, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, memFd!);
    const view = new Uint8Array(libc.view(theirs, SIZE));
    assert.equal([...view.subarray(0x1234, 0x1238)], [0xde, 0xad, 0xbe, 0xef]);
    view[0x2000] = 0x5a; // the back-end writes a used ring: the front-end's mapping sees it
    assert.is(mine[0x2000], 0x5a);
    libc.munmap(theirs, SIZE);
    // The guest's kick (KVM signals the front-end's eventfd) wakes the back-end's descriptor.
    libc.eventfdSignal(r.kicks[1]!);
    assert.is(libc.eventfdDrain(r.backend.kick.get(1)!), 1n);
    assert.is(libc.eventfdDrain(r.backend.kick.get(0)!), 0n);
    // The back-end's call lands on the front-end's (irqfd) eventfd.
    libc.eventfdSignal(r.backend.call.get(0)!);
    libc.eventfdSignal(r.backend.call.get(1)!);
    assert.is(libc.eventfdDrain(r.call), 2n);
  } finally {
    r.done();
  }
});

test('stop takes every started ring back with GET_VRING_BASE', async () => {
  const r = rig();
  try {
    await r.fe.init();
    await r.fe.start(1n << 32n, [r.region], r.rings);
    await r.fe.stop();
    assert.equal(names(r.backend.requests().slice(-2)), ['GET_VRING_BASE', 'GET_VRING_BASE']);
    assert.is(r.backend.enabled.size, 0);
  } finally {
    r.done();
  }
});

test('without PROTOCOL_FEATURES: no protocol negotiation, no SET_VRING_ENABLE, no acks', async () => {
  const r = rig({ features: 1n << 32n });
  try {
    const info = await r.fe.init();
    assert.is(info.queueNum, undefined);
    await r.fe.start(1n << 32n, [r.region], r.rings);
    await r.fe.stop(); // GET_VRING_BASE's replies: the back-end has read everything before them
    const rs = names(r.backend.requests());
    assert.not.ok(rs.includes('GET_PROTOCOL_FEATURES'));
    assert.not.ok(rs.includes('SET_VRING_ENABLE'));
    assert.not.ok(r.backend.seen.find((s) => s.request === REQUEST.SET_MEM_TABLE)!.flags & FLAG_NEED_REPLY);
  } finally {
    r.done();
  }
});

test('a refused SET_MEM_TABLE, features the back-end lacks, a wrong reply: clear errors', async () => {
  let r = rig({ memTableStatus: 1n });
  try {
    await r.fe.init();
    await rejects(() => r.fe.start(1n << 32n, [r.region], r.rings), /refused SET_MEM_TABLE \(status 1\)/);
    await rejects(() => r.fe.start(1n << 5n, [r.region], r.rings), /features 0x20 the back-end does not offer/);
  } finally {
    r.done();
  }
  r = rig({ misreply: true });
  try {
    await rejects(() => r.fe.init(), /expected the reply to GET_FEATURES, got GET_QUEUE_NUM/);
  } finally {
    r.done();
  }
});

test('a back-end that hangs up fails the pending request and reports once', async () => {
  const [a, b] = libc.socketpair();
  const ch = new Channel(a, 'dying back-end');
  const deaths: string[] = [];
  ch.onClose = (e) => deaths.push(e.message);
  const fe = new VhostUserFrontend(ch, 'dying back-end');
  const pending = fe.init();
  libc.close(b);
  await rejects(() => pending, /dying back-end closed the connection/);
  assert.equal(deaths, ['dying back-end closed the connection']);
  assert.throws(() => ch.send(REQUEST.SET_OWNER), /closed the connection/);
  ch.close();
  assert.is(deaths.length, 1);
});

test.run();
