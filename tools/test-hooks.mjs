// Imported before every test file (node --import, by tools/test-report.mjs). uvu 0.5 swallows an
// exception thrown by a test.before hook (its runner returns from a `finally`): the file then
// exits 0 and its error is lost. This wraps the default suite's hooks so the error is printed,
// as `   HOOK FAILED  test.before: <error>`, before uvu sees it; the runner counts the tests that
// never ran as failures. It also writes the name of the test that is running to the file
// $TSVMM_TEST_CURRENT (when set), so the runner can name the test a hung or crashed file was in.
// Needs the test bundles to import uvu from node_modules (one instance).
import { writeFileSync } from 'node:fs';
import { test } from 'uvu';

const current = process.env.TSVMM_TEST_CURRENT;
if (current) {
  // uvu sets state.__test__ before the before.each hooks run.
  test.before.each((state) => {
    try {
      writeFileSync(current, state.__test__ ?? '');
    } catch {
      // the runner's file is best effort
    }
  });
}

for (const kind of ['before', 'after']) {
  for (const each of [false, true]) {
    const owner = each ? test[kind] : test;
    const key = each ? 'each' : kind;
    const register = owner[key];
    const keep = each ? undefined : register.each;
    owner[key] = (fn) =>
      register(async (state) => {
        try {
          await fn(state);
        } catch (e) {
          const text = e instanceof Error ? (e.stack ?? e.message) : String(e);
          process.stdout.write(`\n   HOOK FAILED  test.${kind}${each ? '.each' : ''}: ${text.split('\n').join('\n    ')}\n`);
          throw e;
        }
      });
    if (keep) owner[key].each = keep;
  }
}
