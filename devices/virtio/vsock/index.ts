// The vsock device's public surface for vmm/ (CLI flag, machine wiring, metrics). It owns nothing
// itself; everything else in this folder is internal to the device.

export { VirtioVsock, type VsockDeviceOptions } from './device';
export { parseVsockSpec, validateVsockSpec, VsockSpecError, UDS_PATH_MAX, type VsockSpec } from './spec';
export { VsockConnectError, VsockResetError, VsockSetupError } from './errors';
export { MAX_CONNECTIONS } from './muxer';
export type { VsockCounters } from './counters';
