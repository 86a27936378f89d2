// The errors the vsock host side gives its callers. Guest misbehaviour never becomes one of
// these (it is counted and answered on the wire); they are for tsvmm's own users.

import { TsvmmError } from '../../../lib/errors';
import type { CloseReason } from './csm';

/** The listening socket cannot be set up (path too long, taken, no permission). */
export class VsockSetupError extends TsvmmError {}

/** A host-initiated connection (VsockMuxer.connect) was refused, timed out or hit a limit. */
export class VsockConnectError extends TsvmmError {
  constructor(readonly port: number, readonly reason: CloseReason | 'limit' | 'inactive') {
    super(`vsock connect to guest port ${port} failed: ${reason}`);
  }
}

/** An established in-process connection was reset (guest RST, timeout, device reset). */
export class VsockResetError extends TsvmmError {
  constructor() {
    super('vsock connection reset');
  }
}
