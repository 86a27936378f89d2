// The per-user registry of running VMs behind `tsvmm ps`: one small JSON file per VM in
// $XDG_RUNTIME_DIR/tsvmm (or /tmp/tsvmm-<uid>), written when a VM's API starts and removed when
// it ends. Entries whose pid is dead are stale: ignored (and removed when it is safe to).

import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync, lstatSync } from 'node:fs';
import { join } from 'node:path';
import { atExit } from '../../lib/process-hooks';

export interface VmEntry {
  id: string;
  pid: number;
  api_sock: string | null;
  started: string;
  kernel: string | null;
  vcpus: number | null;
}

export function registryDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_RUNTIME_DIR;
  return xdg ? join(xdg, 'tsvmm') : `/tmp/tsvmm-${process.getuid?.() ?? 0}`;
}

function ensureDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // A directory in /tmp could have been made by someone else: refuse to use it then.
  const st = lstatSync(dir);
  if (!st.isDirectory() || (process.getuid && st.uid !== process.getuid())) throw new Error(`registry ${dir} is not a directory owned by this user`);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Registers a VM; returns the function that removes the entry (also run at process exit). */
export function register(entry: VmEntry, dir = registryDir()): () => void {
  ensureDir(dir);
  const file = join(dir, `${entry.id}.json`);
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(entry) + '\n', { mode: 0o600 });
  renameSync(tmp, file);
  const forget = atExit(() => rmSync(file, { force: true }));
  return () => {
    forget();
    rmSync(file, { force: true });
  };
}

/** Running VMs (live pid), oldest first; stale entries are deleted. */
export function listVms(dir = registryDir()): VmEntry[] {
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith('.json'));
  } catch {
    return [];
  }
  const out: VmEntry[] = [];
  for (const n of names) {
    let e: VmEntry;
    try {
      e = JSON.parse(readFileSync(join(dir, n), 'utf8')) as VmEntry;
    } catch {
      continue; // half-written or foreign file
    }
    if (!Number.isInteger(e.pid) || e.pid <= 0) continue;
    if (alive(e.pid)) out.push(e);
    else rmSync(join(dir, n), { force: true });
  }
  return out.sort((a, b) => a.started.localeCompare(b.started));
}
