// Where tsvmm keeps what it builds once and reuses (the default guest's kernel and images,
// unpacked kernels): $TSVMM_CACHE, else ~/.cache/tsvmm. Owns that one path; each user owns
// its own subdirectory and file names.
import { accessSync, constants, mkdirSync, readFileSync, renameSync, writeFileSync, type BigIntStats } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';

export function cacheDir(): string {
  return process.env.TSVMM_CACHE || join(homedir(), '.cache/tsvmm');
}

/**
 * A directory under the cache that this process can write: `<cache>/<sub>`, or, where the cache
 * cannot be written (a read-only share, a read-only home), `<tmp>/tsvmm-cache-<uid>/<sub>` —
 * the same fallback tools/guest/build-initramfs.sh uses. Created if missing.
 */
export function writableCacheDir(sub: string): string {
  const preferred = join(cacheDir(), sub);
  try {
    mkdirSync(preferred, { recursive: true });
    accessSync(preferred, constants.W_OK);
    return preferred;
  } catch {
    const fallback = fallbackCacheDir(sub);
    mkdirSync(fallback, { recursive: true, mode: 0o700 });
    return fallback;
  }
}

/** writableCacheDir's fallback for `sub` (it may not exist). */
export function fallbackCacheDir(sub: string): string {
  return join(tmpdir(), `tsvmm-cache-${process.getuid?.() ?? 0}`, sub);
}

const statLine = (st: BigIntStats) => `${st.size} ${st.mtimeNs} ${st.ctimeNs}`;

/**
 * A value derived from some files, recorded as `<cache>/<sub>/<name>` (or in the fallback, where
 * the cache is read-only) with the size, mtime and ctime (ns) each file had when it was stat'ed
 * before being read: while they are unchanged the value is taken from here instead of reading
 * and deriving it again (a few stat() calls). Undefined when there is no record or a file
 * changed. `name` must say everything else the value depends on. The record is one line, the
 * files' stat fields and then the value (for one file, the format unpack.ts has always written).
 */
export function recorded(sub: string, name: string, stats: readonly BigIntStats[]): string | undefined {
  const want = `${stats.map(statLine).join(' ')} `;
  for (const dir of [join(cacheDir(), sub), fallbackCacheDir(sub)]) {
    let text: string;
    try {
      text = readFileSync(join(dir, name), 'utf8');
    } catch {
      continue;
    }
    if (text.startsWith(want) && text.endsWith('\n') && text.length > want.length + 1) return text.slice(want.length, -1);
  }
  return undefined;
}

/**
 * Records `value` (one line) for recorded(). `since`: when the caller began (Date.now()), just
 * after it took `stats`; a file changed in the 20 ms before that is not trusted (file times
 * follow a coarse clock: a change within the same tick would go unseen), so nothing is recorded.
 */
export function record(sub: string, name: string, stats: readonly BigIntStats[], value: string, since: number): void {
  if (value.includes('\n')) throw new RangeError(`a cache record is one line: ${JSON.stringify(value)}`);
  const racyNs = BigInt(since - 20) * 1_000_000n;
  if (stats.some((st) => st.mtimeNs >= racyNs || st.ctimeNs >= racyNs)) return;
  try {
    const dir = writableCacheDir(sub);
    const tmp = join(dir, `.${name}.${process.pid}.tmp`);
    writeFileSync(tmp, `${stats.map(statLine).join(' ')} ${value}\n`);
    renameSync(tmp, join(dir, name));
  } catch {
    // Only a shortcut: the next caller derives the value again.
  }
}
