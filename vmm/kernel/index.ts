// A guest kernel the user brought (`--kernel PATH|DIR [--modules DIR]`), made ready to boot:
// located, its release logged, its configuration checked for what the command needs (a gap
// that makes the command impossible fails here, before any VM exists, in words), and — for
// the commands that talk to the guest agent — the agent's initramfs built for it. The default
// guest (no --kernel) does not come through here (vmm/default-guest.ts).
import { ensureAgentImage } from '../default-guest';
import { projectRoot } from '../default-guest';
import { findKernelConfig, kernelModules, kernelRelease, locateKernel, type KernelConfig, type KernelModules } from './inspect';
import { checkKernelConfig, KernelConfigError, readFeatureTable, type KernelUse } from './requirements';

export { KernelConfigError } from './requirements';
export type { KernelUse } from './requirements';

export interface PreparedKernel {
  /** The image to boot. */
  image: string;
  /** Its release (`uname -r`), when the image states it. */
  release?: string;
  /** The agent's initramfs, when one was asked for. */
  initrd?: string;
  config?: KernelConfig;
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
  const config = findKernelConfig(src, rel?.release, modules?.dir);
  if (!config) {
    log('kernel configuration not found (no build tree .config, no config-<release> beside the image, no IKCONFIG): not checked before booting');
  } else {
    const verdict = checkKernelConfig(config.options, readFeatureTable(projectRoot()), o.use, { acpi: o.acpi, modules, ownInitrd: o.ownInitrd });
    for (const w of verdict.warnings) log(`kernel: ${w}`);
    if (verdict.fatal.length) {
      throw new KernelConfigError(`the kernel ${rel?.release ?? src.image} cannot run tsvmm ${o.use} (configuration from ${config.source}):\n  ${verdict.fatal.join('\n  ')}`);
    }
  }
  const out: PreparedKernel = { image: src.image, release: rel?.release, config, modules };
  if (o.agentImage) {
    if (!rel) throw new KernelConfigError(`${src.image}: the image states no kernel release, so no initramfs can be built for it; give --initrd`);
    out.initrd = await ensureAgentImage(rel.release, modules?.dir, log);
  }
  return out;
}
