// The virtio-blk device's public face: what vmm/ and the tests import.
export { VirtioBlock, QUEUE_SIZE, MAX_IN_FLIGHT, SEG_MAX, SIZE_MAX, newBlockCounters, type BlockCounters, type BlockOptions } from './device';
export { FileBackend, DriveOpenError, type BlockBackend } from './backend';
export { parseBlkRequest, REJECT_REASONS, type BlkRequest, type DriveGeometry, type RejectReason } from './request';
export * from './spec';

import { FileBackend } from './backend';
import { VirtioBlock } from './device';
import type { DriveSpec } from './spec';

/** Opens the drive's image and makes its device. */
export async function openDrive(spec: DriveSpec, log?: (m: string) => void): Promise<VirtioBlock> {
  const backend = await FileBackend.open(spec.path, spec.readOnly);
  return new VirtioBlock(backend, { id: spec.id, readOnly: spec.readOnly, log });
}
