// The vsock device's counters (for metrics): one plain mutable object shared by the device, the
// muxer and its connections. It owns only the numbers; exporting them is vmm's business.

import type { DropReason } from './packet';

export interface VsockCounters {
  connectionsOpened: number;
  connectionsClosed: number;
  /** Connections that ended with an RST (either side), a subset of connectionsClosed. */
  connectionsReset: number;
  /** Connections refused: no listener at PATH_P, connection limit, bad CONNECT line. */
  connectionsRefused: number;
  /** Payload bytes guest -> host (accepted from RW packets). */
  bytesFromGuest: number;
  /** Payload bytes host -> guest (written into RX buffers). */
  bytesToGuest: number;
  txPackets: number;
  rxPackets: number;
  // Where a host -> guest stream loses time (docs/benchmarks.md, vsock). Data (RW) packets by
  // how full they left their RX buffer: full, short because the guest's credit ran out (a
  // window's tail), short because our buffered host data ran out.
  rxDataFull: number;
  rxDataShortCredit: number;
  rxDataShortData: number;
  /** Times a connection with host data waiting had no guest credit and then got some back. */
  creditStalls: number;
  /** Their total time, µs: credit used up with data waiting -> the guest packet that gave credit back. */
  creditStallUs: number;
  /** Our part of each reopening, µs: that guest packet -> the first data packet of the new window. */
  creditHopUs: number;
  /** RX turns that wrote at least one packet, and their total time (fill and interrupt), µs. */
  rxBatches: number;
  rxBatchUs: number;
  /** RX turns that stopped with packets waiting and no RX buffer posted, and the time until one came, µs. */
  rxNoBuffer: number;
  rxNoBufferUs: number;
  /** Every TX packet not delivered to a connection, all reasons. */
  packetsDropped: number;
  dropped: Record<DropReason | 'unroutable' | 'invalid-for-state' | 'rx-too-small' | 'rst-queue-full', number>;
  /** Driver bugs that put the device into NEEDS_RESET. */
  queueErrors: number;
  configWrites: number;
}

export function newCounters(): VsockCounters {
  return {
    connectionsOpened: 0,
    connectionsClosed: 0,
    connectionsReset: 0,
    connectionsRefused: 0,
    bytesFromGuest: 0,
    bytesToGuest: 0,
    txPackets: 0,
    rxPackets: 0,
    rxDataFull: 0,
    rxDataShortCredit: 0,
    rxDataShortData: 0,
    creditStalls: 0,
    creditStallUs: 0,
    creditHopUs: 0,
    rxBatches: 0,
    rxBatchUs: 0,
    rxNoBuffer: 0,
    rxNoBufferUs: 0,
    packetsDropped: 0,
    dropped: {
      'short-header': 0,
      'len-too-large': 0,
      'len-past-chain': 0,
      'bad-src-cid': 0,
      'bad-dst-cid': 0,
      'bad-type': 0,
      unroutable: 0,
      'invalid-for-state': 0,
      'rx-too-small': 0,
      'rst-queue-full': 0,
    },
    queueErrors: 0,
    configWrites: 0,
  };
}

export function countDrop(c: VsockCounters, reason: keyof VsockCounters['dropped']): void {
  c.packetsDropped++;
  c.dropped[reason]++;
}
