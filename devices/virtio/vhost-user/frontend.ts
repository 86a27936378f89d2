// The vhost-user front-end: the requests a VMM makes of a device back-end process (virtiofsd)
// to hand it a virtio device's rings, in the order QEMU's vhost code makes them. This module
// owns that sequence and the checks on the replies; it must not know the transport's
// registers (the device hands it queue addresses at DRIVER_OK) or how the back-end was started.
//
// The life of a connection (vhost-user.rst, "Starting and stopping rings"):
//   init:  SET_OWNER; GET_FEATURES; with VHOST_USER_F_PROTOCOL_FEATURES offered,
//          GET_PROTOCOL_FEATURES + SET_PROTOCOL_FEATURES (what both speak), and with MQ,
//          GET_QUEUE_NUM (how many rings the back-end serves).
//   start: SET_FEATURES (what the driver acked, plus PROTOCOL_FEATURES), SET_MEM_TABLE (one
//          memfd per RAM region: the back-end maps guest memory itself), then per ring
//          SET_VRING_NUM, SET_VRING_BASE 0, SET_VRING_ADDR (addresses in *our* address space,
//          which the back-end translates through the memory table), SET_VRING_KICK (the
//          eventfd KVM signals on the guest's QueueNotify write), SET_VRING_CALL (the irqfd
//          KVM turns into the device's interrupt); last SET_VRING_ENABLE 1 (rings start
//          disabled once PROTOCOL_FEATURES is negotiated).
//   stop:  GET_VRING_BASE per ring: the back-end stops processing it and says where it was.
// From then on the back-end and the guest talk through guest memory and two eventfds; no
// file data ever passes through this process.

import { close } from '../../../kvm/libc';
import { Channel, VhostUserError } from './channel';
import {
  FLAG_NEED_REPLY, FLAG_REPLY, FLAG_VERSION, PROTOCOL_F, REQUEST, U64, VHOST_USER_F_PROTOCOL_FEATURES, VringAddr, VringState,
  memTablePayload, requestName, statePayload, u64Payload, vringFilePayload, type MemRegionValue,
} from './messages';

/** Protocol features this front-end uses when the back-end offers them. */
export const WANTED_PROTOCOL_FEATURES = PROTOCOL_F.MQ | PROTOCOL_F.REPLY_ACK;

/** One RAM region to share: where it is in the guest, in this process, and its memfd. */
export interface SharedRegion {
  guestPhysAddr: number;
  size: number;
  /** Host virtual address of the region's mapping in this process. */
  userAddr: bigint;
  fd: number;
  /** Offset of the region in fd. */
  fdOffset: number;
}

export interface RingSetup {
  index: number;
  size: number;
  /** Host virtual addresses (this process) of the descriptor table, available and used rings. */
  desc: bigint;
  avail: bigint;
  used: bigint;
  kickFd: number;
  callFd: number;
}

export interface BackendInfo {
  features: bigint;
  protocolFeatures: bigint;
  /** Rings the back-end serves (GET_QUEUE_NUM), undefined without MQ. */
  queueNum: number | undefined;
}

export class VhostUserFrontend {
  private info?: BackendInfo;
  private started: number[] = [];

  constructor(readonly channel: Channel, private readonly peer: string) {}

  /** What init() learned of the back-end. */
  get backend(): BackendInfo {
    if (!this.info) throw new VhostUserError(`${this.peer}: not initialised`);
    return this.info;
  }

  async init(): Promise<BackendInfo> {
    this.channel.send(REQUEST.SET_OWNER);
    const features = await this.getU64(REQUEST.GET_FEATURES);
    let protocolFeatures = 0n;
    let queueNum: number | undefined;
    if (features & VHOST_USER_F_PROTOCOL_FEATURES) {
      protocolFeatures = (await this.getU64(REQUEST.GET_PROTOCOL_FEATURES)) & WANTED_PROTOCOL_FEATURES;
      this.channel.send(REQUEST.SET_PROTOCOL_FEATURES, u64Payload(protocolFeatures));
      if (protocolFeatures & PROTOCOL_F.MQ) {
        const n = await this.getU64(REQUEST.GET_QUEUE_NUM);
        if (n === 0n || n > 0xffffn) throw new VhostUserError(`${this.peer}: GET_QUEUE_NUM answered ${n}`);
        queueNum = Number(n);
      }
    }
    this.info = { features, protocolFeatures, queueNum };
    return this.info;
  }

  /** Hands the rings over; `features` are the virtio features the driver acked. */
  async start(features: bigint, regions: readonly SharedRegion[], rings: readonly RingSetup[]): Promise<void> {
    const b = this.backend;
    const unknown = features & ~b.features;
    if (unknown) throw new VhostUserError(`${this.peer}: the driver acked features 0x${unknown.toString(16)} the back-end does not offer`);
    const protocol = (b.features & VHOST_USER_F_PROTOCOL_FEATURES) !== 0n;
    this.channel.send(REQUEST.SET_FEATURES, u64Payload(features | (protocol ? VHOST_USER_F_PROTOCOL_FEATURES : 0n)));
    const table: MemRegionValue[] = regions.map((r) => ({
      guestPhysAddr: BigInt(r.guestPhysAddr), memorySize: BigInt(r.size), userspaceAddr: r.userAddr, mmapOffset: BigInt(r.fdOffset),
    }));
    await this.sendAcked(REQUEST.SET_MEM_TABLE, memTablePayload(table), regions.map((r) => r.fd));
    for (const r of rings) {
      this.channel.send(REQUEST.SET_VRING_NUM, statePayload(r.index, r.size));
      this.channel.send(REQUEST.SET_VRING_BASE, statePayload(r.index, 0));
      this.channel.send(REQUEST.SET_VRING_ADDR, VringAddr.encode({
        index: r.index, flags: 0, descUserAddr: r.desc, usedUserAddr: r.used, availUserAddr: r.avail, logGuestAddr: 0n,
      }));
      this.channel.send(REQUEST.SET_VRING_KICK, vringFilePayload(r.index), [r.kickFd]);
      this.channel.send(REQUEST.SET_VRING_CALL, vringFilePayload(r.index), [r.callFd]);
    }
    if (protocol) for (const r of rings) await this.sendAcked(REQUEST.SET_VRING_ENABLE, statePayload(r.index, 1));
    this.started = rings.map((r) => r.index);
  }

  /** Stops every started ring (GET_VRING_BASE); the guest reset the device. */
  async stop(): Promise<void> {
    for (const index of this.started.splice(0)) {
      this.channel.send(REQUEST.GET_VRING_BASE, statePayload(index, 0));
      const reply = await this.reply(REQUEST.GET_VRING_BASE);
      if (reply.length !== VringState.size || VringState.read(reply).index !== index) {
        throw new VhostUserError(`${this.peer}: GET_VRING_BASE ${index}: malformed reply`);
      }
    }
  }

  /** A request the back-end acknowledges with a u64 status when REPLY_ACK is negotiated. */
  private async sendAcked(request: number, payload: Uint8Array, fds: readonly number[] = []): Promise<void> {
    const ack = (this.backend.protocolFeatures & PROTOCOL_F.REPLY_ACK) !== 0n;
    this.channel.send(request, payload, fds, FLAG_VERSION | (ack ? FLAG_NEED_REPLY : 0));
    if (!ack) return;
    const r = await this.reply(request);
    if (r.length !== U64.size) throw new VhostUserError(`${this.peer}: ${requestName(request)}: reply of ${r.length} bytes`);
    const status = U64.read(r).value;
    if (status !== 0n) throw new VhostUserError(`${this.peer} refused ${requestName(request)} (status ${status})`);
  }

  private async getU64(request: number): Promise<bigint> {
    this.channel.send(request);
    const r = await this.reply(request);
    if (r.length !== U64.size) throw new VhostUserError(`${this.peer}: ${requestName(request)}: reply of ${r.length} bytes (expected 8)`);
    return U64.read(r).value;
  }

  /** The payload of the reply to `request`; anything else from the back-end is a protocol error. */
  private async reply(request: number): Promise<Uint8Array> {
    const { message: m, fds } = await this.channel.receive();
    for (const f of fds) closeQuietly(f); // replies carry no descriptors
    if (!(m.flags & FLAG_REPLY) || m.request !== request) {
      throw new VhostUserError(`${this.peer}: expected the reply to ${requestName(request)}, got ${requestName(m.request)} (flags 0x${m.flags.toString(16)})`);
    }
    return m.payload;
  }
}

function closeQuietly(fd: number): void {
  try {
    close(fd);
  } catch {
    // nothing to do
  }
}
