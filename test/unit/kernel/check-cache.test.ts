// The kernel configuration check taken from the cache (vmm/kernel/index.ts, cache.ts recorded()):
// a config-<release> file checked once is not read again while its stat is unchanged, a
// changed file or another use is checked afresh, and a racy (just written) file is not recorded.
// Real files in a temp cache; a synthetic ELF vmlinux that states its release. No KVM.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { appendFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { prepareKernel } from '../../../vmm/kernel/index';
import { KernelConfigError } from '../../../vmm/kernel/requirements';
import { makeElf } from '../boot/images';

const RELEASE = '6.98.0-x';

function withCache(fn: (dir: string) => Promise<void>): () => Promise<void> {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tsvmm-check-cache-'));
    const saved = { cache: process.env.TSVMM_CACHE, tmp: process.env.TMPDIR };
    process.env.TSVMM_CACHE = join(dir, 'cache');
    process.env.TMPDIR = dir;
    try {
      await fn(dir);
    } finally {
      for (const [k, v] of [['TSVMM_CACHE', saved.cache], ['TMPDIR', saved.tmp]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

const records = (dir: string) => {
  try {
    return readdirSync(join(dir, 'cache/kernel-check')).filter((f) => f.startsWith('check-'));
  } catch {
    return [];
  }
};

/** prepareKernel's `kernel:` log lines (the verdict's warnings) for a run with its own initrd. */
async function warnings(image: string, use: 'run' | 'exec' = 'run'): Promise<string[]> {
  const lines: string[] = [];
  await prepareKernel({ kernel: image, use, acpi: true, agentImage: false, ownInitrd: true }, (m) => lines.push(m));
  return lines.filter((l) => l.startsWith('kernel: ') && !l.startsWith(`kernel: ${RELEASE}`));
}

const settle = () => new Promise((r) => setTimeout(r, 50));

test('a config-<release> checked once is taken from the record until it changes', withCache(async (dir) => {
  const image = join(dir, 'vmlinux');
  writeFileSync(image, Buffer.concat([Buffer.from(makeElf()), Buffer.from(`Linux version ${RELEASE} (gcc) #1\0`)]));
  const config = join(dir, `config-${RELEASE}`);
  writeFileSync(config, 'CONFIG_ACPI=y\n');
  // Just written: a change within the file clock's tick could go unseen, so no record.
  const fresh = await warnings(image);
  assert.ok(fresh.some((w) => w.includes('CONFIG_VIRTIO_MMIO')), fresh.join('\n'));
  assert.equal(records(dir), [], 'racy: not recorded');
  await settle();
  assert.equal(await warnings(image), fresh);
  const [name] = records(dir);
  assert.ok(name, 'recorded');
  // The record answers: a verdict put into it by hand is what the next check reports.
  const path = join(dir, 'cache/kernel-check', name!);
  const text = readFileSync(path, 'utf8');
  writeFileSync(path, text.replace(/ \{.*\n$/, ' {"fatal":[],"warnings":["from the record"]}\n'));
  assert.equal(await warnings(image), ['kernel: from the record']);
  // Another use is another record: checked afresh (exec needs vsock: fatal here).
  try {
    await warnings(image, 'exec');
    assert.unreachable('exec accepted a kernel without vsock');
  } catch (e) {
    assert.instance(e, KernelConfigError);
  }
  // The file changed: checked again (CONFIG_PVPANIC now set, so its warning is gone).
  appendFileSync(config, 'CONFIG_PVPANIC=y\nCONFIG_PVPANIC_MMIO=y\n');
  await settle();
  const changed = await warnings(image);
  assert.not.ok(changed.includes('kernel: from the record'));
  assert.ok(changed.length < fresh.length, `${changed.length} warnings after setting PVPANIC, ${fresh.length} before`);
}));

test.run();
