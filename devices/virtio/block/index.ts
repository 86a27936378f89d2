// The virtio-blk device's public face: what vmm/ and the tests import.
export { VirtioBlock, QUEUE_SIZE, SEG_MAX, SIZE_MAX, type BlockOptions } from './device';
export { DriveImage, DriveOpenError, FileIo, SyncIo, UringIo, type BlockIo, type IoOp } from './backend';
export { BlockRequestServer, BATCH, newCounterCells, readCounters, type BlockCounters } from './serve';
export { parseBlkRequest, REJECT_REASONS, type BlkRequest, type DriveGeometry, type RejectReason } from './request';
export * from './spec';

import type { HostRegion } from '../../memory';
import { DriveImage } from './backend';
import { VirtioBlock } from './device';
import type { DriveSpec } from './spec';

/** Opens the drive's image and makes its device (whose I/O thread maps `ram`). */
export async function openDrive(spec: DriveSpec, ram: readonly HostRegion[], log?: (m: string) => void): Promise<VirtioBlock> {
  const image = await DriveImage.open(spec.path, spec.readOnly);
  try {
    return new VirtioBlock(image, { id: spec.id, readOnly: spec.readOnly, ram, log });
  } catch (e) {
    await image.close();
    throw e;
  }
}
