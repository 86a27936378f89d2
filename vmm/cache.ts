// Where tsvmm keeps what it builds once and reuses (the default guest's kernel and images,
// unpacked kernels): $TSVMM_CACHE, else ~/.cache/tsvmm. Owns that one path; each user owns
// its own subdirectory and file names.
import { accessSync, constants, mkdirSync } from 'node:fs';
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
