// Test helper: an IoVecBuffer over plain byte arrays, each its own "RAM region" of a GuestMemory,
// so tests build scatter lists the way a queue does (through GuestMemory.slice).
import { GuestMemory } from '../../../devices/memory';
import { IoVecBuffer } from '../../../devices/virtio/iovec';

/** Region i sits at guest physical i * 4 GiB: far enough apart that none can touch another. */
const STRIDE = 0x1_0000_0000;

export function iovOf(...parts: Uint8Array[]): IoVecBuffer {
  const mem = new GuestMemory(parts.map((bytes, i) => ({ gpa: i * STRIDE, bytes })));
  const iov = new IoVecBuffer();
  parts.forEach((p, i) => {
    if (!iov.append(mem, i * STRIDE, p.length)) throw new Error(`part ${i} is not in its region`);
  });
  return iov;
}
