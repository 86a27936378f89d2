// What every fuzz target shares: a seeded PRNG (so a failing case replays from its seed), the
// case budget (short in CI, long behind TSVMM_FUZZ_CASES), byte mutations of valid inputs, and
// the run summary. Targets live next to this file, one per input door; tools/fuzz.mjs runs
// them all with the long budget and collects the figures for docs/security.md.
//
//   TSVMM_FUZZ_CASES=1000000 TSVMM_FUZZ_SEED=0x1234 node dist/test/unit/fuzz/<target>.test.js

/** Cases per target: the short CI budget unless TSVMM_FUZZ_CASES says otherwise. */
export function caseBudget(short: number): number {
  const env = process.env.TSVMM_FUZZ_CASES;
  if (env === undefined) return short;
  const n = Number(env);
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`TSVMM_FUZZ_CASES '${env}' is not a positive integer`);
  return n;
}

/** The run's seed: TSVMM_FUZZ_SEED, else a fixed one per target (CI runs are reproducible). */
export function seedFor(target: string): number {
  const env = process.env.TSVMM_FUZZ_SEED;
  if (env !== undefined) return Number(env) >>> 0;
  let h = 0x811c9dc5;
  for (const c of target) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0;
  return h;
}

/** mulberry32: small, fast, good enough to explore input states. */
export function prng(seed: number) {
  let s = seed >>> 0;
  const next = (): number => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
  const int = (n: number): number => Math.floor(next() * n);
  return {
    next,
    int,
    u32: (): number => int(2 ** 32),
    chance: (p: number): boolean => next() < p,
    pick: <T>(xs: readonly T[]): T => xs[int(xs.length)]!,
    bytes: (n: number): Uint8Array => {
      const b = new Uint8Array(n);
      for (let i = 0; i < n; i++) b[i] = int(256);
      return b;
    },
  };
}
export type Rng = ReturnType<typeof prng>;

/** Integers a parser is likely to get wrong. */
export function edgeU32(rng: Rng): number {
  return rng.pick([0, 1, 2, 7, 8, 9, 63, 64, 65, 255, 256, 4095, 4096, 65535, 65536, 0x7fffffff, 0x80000000, 0xfffffff8, 0xfffffffe, 0xffffffff, rng.u32()]);
}

/** A mutated copy of `input`: byte flips, truncation, insertions, splices of `dict` words, u32 edges. */
export function mutate(rng: Rng, input: Uint8Array, dict: readonly Uint8Array[] = []): Uint8Array {
  let b: Uint8Array = Uint8Array.from(input);
  const rounds = 1 + rng.int(4);
  for (let r = 0; r < rounds; r++) {
    switch (rng.int(7)) {
      case 0: // flip bytes
        for (let k = 0, n = 1 + rng.int(4); k < n && b.length; k++) b[rng.int(b.length)] = rng.int(256);
        break;
      case 1: // truncate
        b = b.subarray(0, rng.int(b.length + 1));
        break;
      case 2: { // insert random bytes
        const at = rng.int(b.length + 1);
        b = concat(b.subarray(0, at), rng.bytes(1 + rng.int(16)), b.subarray(at));
        break;
      }
      case 3: { // splice a dictionary word
        if (!dict.length) break;
        const at = rng.int(b.length + 1);
        b = concat(b.subarray(0, at), rng.pick(dict), b.subarray(rng.chance(0.5) ? at : Math.min(b.length, at + rng.int(8))));
        break;
      }
      case 4: { // overwrite a little-endian u32 with an edge value
        if (b.length < 4) break;
        const at = rng.int(b.length - 3);
        new DataView(b.buffer, b.byteOffset, b.length).setUint32(at, edgeU32(rng), true);
        break;
      }
      case 5: { // duplicate a slice
        const from = rng.int(b.length + 1);
        const to = Math.min(b.length, from + rng.int(64));
        b = concat(b, b.subarray(from, to));
        break;
      }
      default: // leave it
        break;
    }
  }
  return b;
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** How often a long run reports its progress. */
const PROGRESS_MS = 30_000;

/** Runs `one` for every case; a throw is a crash: reported with the seed and case, then rethrown. */
export async function fuzz(
  target: string, short: number, one: (rng: Rng, i: number) => void | Promise<void>, state?: () => string,
): Promise<{ cases: number; seed: number; ms: number }> {
  const cases = caseBudget(short);
  const seed = seedFor(target);
  const rng = prng(seed);
  const t0 = performance.now();
  // Long runs say how far they are (stderr, every PROGRESS_MS): a run that stops making
  // progress shows where, and with `state` what it waits for.
  let i = 0;
  const progress = cases > short ? setInterval(() => {
    process.stderr.write(`fuzz ${target}: ${i}/${cases} cases, ${((performance.now() - t0) / 1000).toFixed(0)} s${state ? `, ${state()}` : ''}\n`);
  }, PROGRESS_MS) : undefined;
  progress?.unref();
  try {
    for (; i < cases; i++) {
      try {
        await one(rng, i);
      } catch (e) {
        throw new Error(`fuzz ${target}: crash at case ${i} (seed 0x${seed.toString(16)}; replay with TSVMM_FUZZ_SEED=0x${seed.toString(16)} TSVMM_FUZZ_CASES=${i + 1}): ${(e as Error).stack ?? String(e)}`);
      }
    }
  } finally {
    clearInterval(progress);
  }
  const ms = performance.now() - t0;
  report(target, cases, seed, ms);
  return { cases, seed, ms };
}

/** The line tools/fuzz.mjs collects. */
export function report(target: string, cases: number, seed: number, ms: number, extra = ''): void {
  console.log(`FUZZ ${target} cases=${cases} crashes=0 seed=0x${seed.toString(16)} ms=${Math.round(ms)}${extra ? ` ${extra}` : ''}`);
}
