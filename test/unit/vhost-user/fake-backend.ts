// A vhost-user back-end in this process, on the other end of a socketpair: enough of
// libvhost-user's behaviour to drive the front-end through init, start and stop, recording
// every request and keeping the descriptors it was handed, so tests can check what a real
// daemon would have received (the memory it maps, the eventfds it would poll and signal).
import * as libc from '../../../kvm/libc';
import { Channel } from '../../../devices/virtio/vhost-user/channel';
import {
  FLAG_NEED_REPLY, FLAG_REPLY, FLAG_VERSION, PROTOCOL_F, REQUEST, U64, VHOST_USER_F_PROTOCOL_FEATURES, VringAddr, VringState,
  decodeMemTable, u64Payload, type MemRegionValue,
} from '../../../devices/virtio/vhost-user/messages';

export interface Seen {
  request: number;
  flags: number;
  payload: Uint8Array;
  fds: number[];
}

export interface FakeOptions {
  features?: bigint;
  protocolFeatures?: bigint;
  queueNum?: number;
  /** Answer SET_MEM_TABLE's REPLY_ACK with this status. */
  memTableStatus?: bigint;
  /** Answer GET_FEATURES with a reply to another request instead (a broken back-end). */
  misreply?: boolean;
}

export const FS_FEATURES = (1n << 32n) | (1n << 29n) | (1n << 28n) | (1n << 24n) | (1n << 26n) | VHOST_USER_F_PROTOCOL_FEATURES;

export class FakeBackend {
  readonly seen: Seen[] = [];
  memTable?: MemRegionValue[];
  memFds: number[] = [];
  readonly kick = new Map<number, number>();
  readonly call = new Map<number, number>();
  readonly addr = new Map<number, ReturnType<typeof VringAddr.read>>();
  readonly enabled = new Set<number>();
  private readonly ch: Channel;

  constructor(fd: number, private readonly o: FakeOptions = {}) {
    this.ch = new Channel(fd, 'front-end');
    void this.loop();
  }

  private reply(request: number, payload: Uint8Array): void {
    this.ch.send(request, payload, [], FLAG_VERSION | FLAG_REPLY);
  }

  private async loop(): Promise<void> {
    for (;;) {
      let m;
      try {
        m = await this.ch.receive();
      } catch {
        return;
      }
      const { request, flags, payload } = m.message;
      this.seen.push({ request, flags, payload, fds: m.fds });
      const ack = (status = 0n) => {
        if (flags & FLAG_NEED_REPLY) this.reply(request, u64Payload(status));
      };
      switch (request) {
        case REQUEST.GET_FEATURES:
          this.reply(this.o.misreply ? REQUEST.GET_QUEUE_NUM : request, u64Payload(this.o.features ?? FS_FEATURES));
          break;
        case REQUEST.GET_PROTOCOL_FEATURES:
          this.reply(request, u64Payload(this.o.protocolFeatures ?? (PROTOCOL_F.MQ | PROTOCOL_F.REPLY_ACK | PROTOCOL_F.CONFIG)));
          break;
        case REQUEST.GET_QUEUE_NUM:
          this.reply(request, u64Payload(BigInt(this.o.queueNum ?? 2)));
          break;
        case REQUEST.SET_MEM_TABLE:
          this.memTable = decodeMemTable(payload);
          this.memFds = m.fds;
          ack(this.o.memTableStatus ?? 0n);
          break;
        case REQUEST.SET_VRING_ADDR: {
          const a = VringAddr.read(payload);
          this.addr.set(a.index, a);
          break;
        }
        case REQUEST.SET_VRING_KICK:
          this.kick.set(Number(U64.read(payload).value & 0xffn), m.fds[0]!);
          break;
        case REQUEST.SET_VRING_CALL:
          this.call.set(Number(U64.read(payload).value & 0xffn), m.fds[0]!);
          break;
        case REQUEST.SET_VRING_ENABLE: {
          const s = VringState.read(payload);
          if (s.num) this.enabled.add(s.index);
          else this.enabled.delete(s.index);
          ack();
          break;
        }
        case REQUEST.GET_VRING_BASE: {
          const s = VringState.read(payload);
          this.enabled.delete(s.index);
          this.reply(request, VringState.encode({ index: s.index, num: 0 }));
          break;
        }
        default:
          ack();
      }
    }
  }

  requests(): number[] {
    return this.seen.map((s) => s.request);
  }

  close(): void {
    this.ch.close();
    for (const f of [...this.memFds, ...this.kick.values(), ...this.call.values()]) {
      try {
        libc.close(f);
      } catch {
        // already closed
      }
    }
  }
}
