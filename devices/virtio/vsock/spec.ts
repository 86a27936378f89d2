// The vsock device's configuration as a user gives it: the `--vsock cid=N,uds=PATH` flag, and
// the one validation every door uses (flag, config file, API: vmm/api/resources.ts calls
// validateVsockSpec too). It owns what a user may ask for (CID range, a socket path that can
// be bound and is not someone else's file); it must not create anything.

import { SUN_PATH_MAX, socketPathProblem } from '../../socket-path';
import { UsageError } from '../../../lib/errors';

export interface VsockSpec {
  cid: number;
  udsPath: string;
}

/** A bad --vsock value (or the same spec in a config file): a usage error. */
export class VsockSpecError extends UsageError {}

/** "_<port>" with the longest u32 port, which guest connects append to the path. */
export const PORT_SUFFIX_MAX = '_4294967295'.length;
/** The longest uds path: sun_path with room for the suffix. */
export const UDS_PATH_MAX = SUN_PATH_MAX - PORT_SUFFIX_MAX;
/** Guest CIDs a user may give: 0-2 are reserved (hypervisor, local, host), 2^32-1 is VMADDR_CID_ANY. */
export const CID_MIN = 3;
export const CID_MAX = 0xffff_fffe;

/** Field names in messages, as the door names them (`--vsock: cid`, `vsock.guest_cid`). */
export interface VsockFieldNames {
  cid: string;
  path: string;
}

/** The checks shared by every door; throws VsockSpecError naming the field. */
export function validateVsockSpec(spec: VsockSpec, names: VsockFieldNames = { cid: '--vsock: cid', path: '--vsock: uds path' }): VsockSpec {
  const { cid, udsPath } = spec;
  if (!Number.isSafeInteger(cid) || cid < CID_MIN || cid > CID_MAX) {
    throw new VsockSpecError(`${names.cid} ${cid} must be in ${CID_MIN}..${CID_MAX}`);
  }
  const problem = udsPath === '' ? 'is empty' : socketPathProblem(udsPath, PORT_SUFFIX_MAX);
  if (problem) throw new VsockSpecError(`${names.path} ${udsPath}: ${problem}`);
  return { cid, udsPath };
}

export function parseVsockSpec(spec: string): VsockSpec {
  const fields = new Map<string, string>();
  for (const part of spec.split(',')) {
    const eq = part.indexOf('=');
    if (eq <= 0) throw new VsockSpecError(`--vsock: expected key=value, got "${part}" (format: cid=N,uds=PATH)`);
    const k = part.slice(0, eq).trim();
    if (k !== 'cid' && k !== 'uds') throw new VsockSpecError(`--vsock: unknown key "${k}" (known: cid, uds)`);
    if (fields.has(k)) throw new VsockSpecError(`--vsock: "${k}" given twice`);
    fields.set(k, part.slice(eq + 1));
  }
  const cidText = fields.get('cid');
  const udsPath = fields.get('uds');
  if (cidText === undefined) throw new VsockSpecError('--vsock: missing cid=N');
  if (udsPath === undefined || udsPath === '') throw new VsockSpecError('--vsock: missing uds=PATH');
  if (!/^\d+$/.test(cidText)) throw new VsockSpecError(`--vsock: cid "${cidText}" is not a decimal number`);
  return validateVsockSpec({ cid: Number(cidText), udsPath });
}
