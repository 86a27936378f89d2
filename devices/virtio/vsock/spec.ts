// Parses the `--vsock cid=N,uds=PATH` flag value. It owns the validation of what a user may ask
// for (CID range, a socket path that can be bound); it must not create anything.

import { accessSync, constants, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

export interface VsockSpec {
  cid: number;
  udsPath: string;
}

export class VsockSpecError extends Error {
  override readonly name = 'VsockSpecError';
}

/** sun_path is 108 bytes with its NUL; "_<port>" (up to 11 bytes) must still fit for guest connects. */
const SUN_PATH_MAX = 107;
const PORT_SUFFIX_MAX = 11;

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
  const cid = Number(cidText);
  // 0-2 are reserved (hypervisor, local, host); 2^32-1 is VMADDR_CID_ANY.
  if (cid < 3 || cid >= 0xffff_ffff) throw new VsockSpecError(`--vsock: cid ${cidText} must be in 3..4294967294`);

  const bytes = Buffer.byteLength(udsPath);
  if (bytes + PORT_SUFFIX_MAX > SUN_PATH_MAX) {
    throw new VsockSpecError(`--vsock: uds path is ${bytes} bytes; at most ${SUN_PATH_MAX - PORT_SUFFIX_MAX} fit a Unix socket address (with "_<port>")`);
  }
  const dir = dirname(resolve(udsPath));
  try {
    if (!statSync(dir).isDirectory()) throw new VsockSpecError(`--vsock: ${dir} is not a directory`);
    accessSync(dir, constants.W_OK | constants.X_OK);
  } catch (e) {
    if (e instanceof VsockSpecError) throw e;
    throw new VsockSpecError(`--vsock: cannot create ${udsPath}: directory ${dir} is missing or not writable`);
  }
  try {
    const st = statSync(udsPath);
    // A socket may be a stale one from a crashed run (the muxer checks); anything else is not ours.
    if (!st.isSocket()) throw new VsockSpecError(`--vsock: ${udsPath} exists and is not a socket`);
  } catch (e) {
    if (e instanceof VsockSpecError) throw e;
  }
  return { cid, udsPath };
}
