// The block device's wire facts (virtio 1.x §5.2: feature bits, request types, status codes, the
// request header and config space layouts) and its configuration as a user gives it: the
// `--drive path=IMG[,ro][,id=NAME][,root]` flag and the one validation every door uses (flag,
// config file, API `PUT /drives/{id}`). It owns what a user may ask for; it must not open files.

import { bytes, struct, u16, u32, u64, u8 } from '../../../lib/struct';
import { UsageError } from '../../../lib/errors';

export const VIRTIO_ID_BLOCK = 2;

/** Device feature bits (§5.2.3). */
export const VIRTIO_BLK_F_SIZE_MAX = 1n << 1n;
export const VIRTIO_BLK_F_SEG_MAX = 1n << 2n;
export const VIRTIO_BLK_F_RO = 1n << 5n;
export const VIRTIO_BLK_F_FLUSH = 1n << 9n;

/** Request types (§5.2.6). */
export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
/** Status byte values. */
export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;

/** Sectors are always 512 bytes on the wire, whatever blk_size says. */
export const SECTOR_SIZE = 512;
export const SECTOR_SHIFT = 9n;
/** GET_ID answers with 20 bytes: the id, NUL padded (not terminated when it is 20 long). */
export const VIRTIO_BLK_ID_BYTES = 20;

/** struct virtio_blk_outhdr: what every request starts with. */
export const BlkReqHeader = struct('virtio_blk_outhdr', 16, { type: u32(0), ioprio: u32(4), sector: u64(8) });
/**
 * The start of struct virtio_blk_config: the fields tsvmm fills. Offsets past `size` read as
 * zero (the features that give them meaning are not offered).
 */
export const BlkConfig = struct('virtio_blk_config', 24, {
  capacity: u64(0),
  sizeMax: u32(8),
  segMax: u32(12),
  cylinders: u16(16, 'geometry.cylinders'),
  heads: u8(18, 'geometry.heads'),
  sectors: u8(19, 'geometry.sectors'),
  blkSize: u32(20),
});
/** The id as GET_ID returns it (a struct only so that the layout has one place). */
export const BlkId = struct('virtio_blk_id', VIRTIO_BLK_ID_BYTES, { id: bytes(0, VIRTIO_BLK_ID_BYTES) });

export interface DriveSpec {
  /** The drive's name: GET_ID's answer, the API's drive_id. */
  id: string;
  path: string;
  readOnly: boolean;
  /** The guest boots from it: it becomes /dev/vda and the command line gets root=/dev/vda. */
  root: boolean;
}

/** A bad --drive value (or the same in a config file or API body): a usage error. */
export class DriveSpecError extends UsageError {}

/** Drive ids: what Firecracker accepts (alphanumerics and _), at most the 20 bytes GET_ID carries. */
const ID_RE = /^[A-Za-z0-9_-]{1,20}$/;
/** More drives than this would run out of virtio-mmio slots long before the guest's vdz. */
export const MAX_DRIVES = 16;

/** The checks every door shares; throws DriveSpecError. `where` names the flag or field. */
export function validateDriveSpec(d: DriveSpec, where = '--drive'): DriveSpec {
  if (!ID_RE.test(d.id)) throw new DriveSpecError(`${where}: id '${d.id}' must be 1-20 characters of A-Z a-z 0-9 _ -`);
  if (d.path === '') throw new DriveSpecError(`${where}: path is empty`);
  return d;
}

/** The drives of one machine: ids unique, at most one root (which goes first: it must be vda). */
export function orderDrives(drives: readonly DriveSpec[], where = '--drive'): DriveSpec[] {
  if (drives.length > MAX_DRIVES) throw new DriveSpecError(`${where}: ${drives.length} drives, at most ${MAX_DRIVES}`);
  const ids = new Set<string>();
  for (const d of drives) {
    if (ids.has(d.id)) throw new DriveSpecError(`${where}: id '${d.id}' given twice`);
    ids.add(d.id);
  }
  const roots = drives.filter((d) => d.root);
  if (roots.length > 1) throw new DriveSpecError(`${where}: ${roots.map((d) => d.id).join(' and ')} are both root devices (at most one)`);
  return [...roots, ...drives.filter((d) => !d.root)];
}

/** `path=IMG[,ro][,id=NAME][,root]`; `index` names a drive without id (drive0, drive1, …). */
export function parseDriveSpec(spec: string, index: number): DriveSpec {
  let path: string | undefined;
  let id: string | undefined;
  let readOnly = false;
  let root = false;
  for (const part of spec.split(',')) {
    const eq = part.indexOf('=');
    const k = eq < 0 ? part : part.slice(0, eq);
    const v = eq < 0 ? undefined : part.slice(eq + 1);
    const once = (seen: unknown) => {
      if (seen !== undefined && seen !== false) throw new DriveSpecError(`--drive: "${k}" given twice`);
    };
    if (k === 'path' && v !== undefined) { once(path); path = v; }
    else if (k === 'id' && v !== undefined) { once(id); id = v; }
    else if (k === 'ro' && v === undefined) { once(readOnly); readOnly = true; }
    else if (k === 'root' && v === undefined) { once(root); root = true; }
    else throw new DriveSpecError(`--drive: unknown part "${part}" (format: path=IMG[,ro][,id=NAME][,root])`);
  }
  if (path === undefined) throw new DriveSpecError('--drive: missing path=IMG');
  return validateDriveSpec({ id: id ?? `drive${index}`, path, readOnly, root });
}
