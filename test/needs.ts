// Real skips with a reason, for unit and integration tests alike. `needs(missing)('name', fn)`
// is uvu's `test` when nothing is missing, and otherwise a `test.skip` that prints
// `skip "name": <why>` for tools/test.mjs to list in its summary (and to fail CI with: under
// CI=true every prerequisite must be there). A test never `return`s early on a missing tool or
// privilege: uvu would count that as a pass.
import { spawnSync } from 'node:child_process';
import { test } from 'uvu';

type Body = () => void | Promise<void>;

/** `test`, or a reasoned skip when `missing` says what is absent (undefined: nothing is). */
export function needs(missing: string | undefined): (name: string, fn: Body) => void {
  if (missing === undefined) return (name, fn) => test(name, fn);
  return (name, fn) => {
    process.stdout.write(`skip ${JSON.stringify(name)}: ${missing}\n`);
    test.skip(name, fn);
  };
}

/** Why `cmd` cannot be used (not on PATH), or undefined when it can. */
export function missingCommand(...cmds: string[]): string | undefined {
  const absent = cmds.filter((c) => spawnSync('sh', ['-c', 'command -v "$1"', 'sh', c]).status !== 0);
  return absent.length ? `needs ${absent.join(', ')} (tools/setup.sh installs ${absent.length > 1 ? 'them' : 'it'})` : undefined;
}

/** The first reason in the list, so several prerequisites read as one `needs(...)`. */
export function firstMissing(...reasons: (string | undefined)[]): string | undefined {
  return reasons.find((r) => r !== undefined);
}

/** Why the npm packages cannot be imported here (not installed), or undefined when they can. */
export function missingPackages(...names: string[]): string | undefined {
  const absent = names.filter((n) => {
    try {
      import.meta.resolve(n);
      return false;
    } catch {
      return true;
    }
  });
  return absent.length ? `needs the npm package(s) ${absent.join(', ')} (npm ci installs them)` : undefined;
}
