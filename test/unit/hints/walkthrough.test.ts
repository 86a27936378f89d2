// docs/hint-programs.md promises that a new hint type takes three files: the program with its
// decoder and handler (vmm/hints/nice.ts), two lines in vmm/hints/programs.ts, and a test. This
// takes the walkthrough's code blocks as the document prints them, puts them where it says
// (in a scratch tree whose other files are links to this checkout's), bundles the walkthrough's
// own test with esbuild and runs it: if the document's code stops compiling against the
// registry, or needs a fourth file, or its test fails, this fails. No VM needed.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectRoot } from '../../../vmm/default-guest';

const ROOT = projectRoot();
const doc = readFileSync(join(ROOT, 'docs/hint-programs.md'), 'utf8');
const blocks = [...doc.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);

test('the walkthrough adds a hint type in the three files it names, and its own test passes', async () => {
  // The table of files: exactly three, new or changed.
  const table = [...doc.matchAll(/^\| `([^`]+)` \| (new|changed)[^|]*\|/gm)].map((m) => m[1]!);
  assert.equal(table, ['vmm/hints/nice.ts', 'vmm/hints/programs.ts', 'test/unit/hints/nice.test.ts']);
  const [nice, registration, niceTest] = blocks;
  assert.is(blocks.length, 3, 'one code block per file');
  assert.match(nice!, /^\/\/ The `nice` hint program/);
  const docImport = /^import \{ niceProgram \} from '\.\/nice';$/m.exec(registration!)?.[0];
  const docList = /^export const HINT_PROGRAMS[^\n]*$/m.exec(registration!)?.[0];
  assert.ok(docImport && docList, registration);

  const scratch = mkdtempSync(join(tmpdir(), 'tsvmm-walkthrough-'));
  try {
    // The checkout, linked entry by entry, with the walkthrough's files written into it.
    const mirror = (rel: string, except: string[]) => {
      mkdirSync(join(scratch, rel), { recursive: true });
      for (const e of readdirSync(join(ROOT, rel))) if (!except.includes(e)) symlinkSync(join(ROOT, rel, e), join(scratch, rel, e));
    };
    mirror('.', ['vmm', 'test', 'dist']);
    mirror('vmm', ['hints']);
    mirror('vmm/hints', ['programs.ts']);
    mirror('test/unit/hints', []);
    writeFileSync(join(scratch, 'vmm/hints/nice.ts'), nice!);
    // Change 2 as the document states it: its import beside the others, its list for the old one.
    const programs = readFileSync(join(ROOT, 'vmm/hints/programs.ts'), 'utf8');
    const list = /^export const HINT_PROGRAMS[\s\S]*?\];$/m;
    assert.match(programs, list);
    const changed = programs.replace(/^(import type \{ HintProgram \} from '\.\/registry';)$/m, `${docImport}\n$1`).replace(list, docList!);
    assert.is(changed.split('\n').filter((l) => !programs.split('\n').includes(l)).length, 2, 'two changed lines');
    writeFileSync(join(scratch, 'vmm/hints/programs.ts'), changed);
    writeFileSync(join(scratch, 'test/unit/hints/nice.test.ts'), niceTest!);

    const out = join(scratch, 'nice.test.mjs');
    // The esbuild CLI (its JS API does not survive being bundled into this test).
    const b = spawnSync(join(ROOT, 'node_modules/.bin/esbuild'), [join(scratch, 'test/unit/hints/nice.test.ts'), `--outfile=${out}`, '--bundle', '--platform=node',
      '--format=esm', '--target=node20', '--external:koffi', '--log-level=error',
      "--banner:js=import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);"], { encoding: 'utf8' });
    assert.is(b.status, 0, `the walkthrough's files do not build:\n${b.stderr}`);
    const r = spawnSync(process.execPath, [out], { cwd: scratch, encoding: 'utf8', env: { ...process.env, FORCE_COLOR: '0', NODE_DISABLE_COLORS: '1' } });
    assert.is(r.status, 0, `${r.stdout}${r.stderr}`.replace(/FAIL/g, 'failed:')); // not a FAIL block of this file for the runner
    assert.match(r.stdout, /Total:\s+1\b[\s\S]*Passed:\s+1\b/, r.stdout);
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
});

test.run();
