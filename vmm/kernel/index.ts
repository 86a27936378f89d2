// A guest kernel the user brought (`--kernel PATH|DIR [--modules DIR]`), made ready to boot:
// located, its release logged, its configuration checked for what the command needs (a gap
// that makes the command impossible fails here, before any VM exists, in words), and — for
// the commands that talk to the guest agent — the agent's initramfs built for it. The default
// guest (no --kernel) does not come through here (vmm/default-guest.ts).
import { createHash } from 'node:crypto';
import { realpathSync, statSync, type BigIntStats } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { record, recorded } from '../cache';
import { ensureAgentImage } from '../default-guest';
import { projectRoot } from '../default-guest';
import { findKernelConfig, kernelConfigFile, kernelModules, kernelRelease, locateKernel, type KernelModules, type KernelSource } from './inspect';
import { checkKernelConfig, KernelConfigError, readFeatureTable, type KernelUse, type Verdict } from './requirements';

export { KernelConfigError } from './requirements';
export type { KernelUse } from './requirements';

export interface PreparedKernel {
  /** The image to boot. */
  image: string;
  /** Its release (`uname -r`), when the image states it. */
  release?: string;
  /** The agent's initramfs, when one was asked for. */
  initrd?: string;
  modules?: KernelModules;
}

export interface PrepareOptions {
  kernel: string;
  modules?: string;
  use: KernelUse;
  acpi: boolean;
  /** Build the agent's initramfs for this kernel. */
  agentImage: boolean;
  /** The user gives the initramfs (--initrd): it loads the modules, tsvmm does not check them. */
  ownInitrd?: boolean;
}

export async function prepareKernel(o: PrepareOptions, log: (msg: string) => void): Promise<PreparedKernel> {
  const src = locateKernel(o.kernel);
  const rel = kernelRelease(src.image);
  log(`kernel ${rel ? rel.release : '(the image states no release)'}: ${src.image}${src.tree ? ` (build tree ${src.tree})` : ''}`);
  const modules = kernelModules({ modules: o.modules, tree: src.tree, release: rel?.release });
  if (modules) log(`kernel modules: ${modules.source}`);
  const checked = checkConfig(src, rel?.release, modules, o);
  if (!checked) {
    log('kernel configuration not found (no build tree .config, no config-<release> beside the image, no IKCONFIG): not checked before booting');
  } else {
    const { source, verdict } = checked;
    for (const w of verdict.warnings) log(`kernel: ${w}`);
    if (verdict.fatal.length) {
      throw new KernelConfigError(`the kernel ${rel?.release ?? src.image} cannot run tsvmm ${o.use} (configuration from ${source}):\n  ${verdict.fatal.join('\n  ')}`);
    }
  }
  const out: PreparedKernel = { image: src.image, release: rel?.release, modules };
  if (o.agentImage) {
    if (!rel) throw new KernelConfigError(`${src.image}: the image states no kernel release, so no initramfs can be built for it; give --initrd`);
    out.initrd = await ensureAgentImage(rel.release, modules?.dir, log);
  }
  return out;
}

/**
 * The kernel's configuration checked for \`o.use\` (requirements.ts), and where it came from;
 * undefined when there is none. A configuration that is a file (config-<release>, a build
 * tree's .config) checked without modules is taken from the cache while that file, the feature
 * table (tools/guest/modules.txt) and this code's own bundle keep their stat (cache.ts,
 * recorded()): reading, parsing and checking Debian's 260 KB config-<release> on every boot
 * took ~10 ms natively and 0.1–0.3 s in the nested sandbox; the stat()s take well under 1 ms.
 */
function checkConfig(src: KernelSource, release: string | undefined, modules: KernelModules | undefined, o: PrepareOptions): { source: string; verdict: Verdict } | undefined {
  const since = Date.now();
  const root = projectRoot();
  const file = modules ? undefined : kernelConfigFile(src, release);
  const key = file === undefined ? undefined : checkKey(file, root, o);
  const hit = key && parseVerdict(recorded('kernel-check', key.name, key.stats));
  if (file !== undefined && hit) return { source: file, verdict: hit };
  const config = findKernelConfig(src, release, modules?.dir);
  if (!config) return undefined;
  const verdict = checkKernelConfig(config.options, readFeatureTable(root), o.use, { acpi: o.acpi, modules, ownInitrd: o.ownInitrd });
  if (key) record('kernel-check', key.name, key.stats, JSON.stringify(verdict), since);
  return { source: config.source, verdict };
}

/** The record's name (the inputs' real paths and the options checked for) and the inputs' stat. */
function checkKey(file: string, root: string, o: PrepareOptions): { name: string; stats: BigIntStats[] } {
  const inputs = [file, join(root, 'tools/guest/modules.txt'), fileURLToPath(import.meta.url)];
  const id = JSON.stringify([1, inputs.map((f) => realpathSync(f)), o.use, o.acpi, o.ownInitrd === true]);
  return { name: `check-${createHash('sha256').update(id).digest('hex').slice(0, 16)}`, stats: inputs.map((f) => statSync(f, { bigint: true })) };
}

/** A recorded verdict, or undefined for none or one that does not parse as one. */
function parseVerdict(text: string | undefined): Verdict | undefined {
  if (text === undefined) return undefined;
  try {
    const v = JSON.parse(text) as Verdict;
    const strings = (a: unknown) => Array.isArray(a) && a.every((x) => typeof x === 'string');
    return strings(v.fatal) && strings(v.warnings) ? v : undefined;
  } catch {
    return undefined;
  }
}
