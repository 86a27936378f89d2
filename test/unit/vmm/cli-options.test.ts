// The kernel command line machineConfig builds (vmm/cli-options.ts): exec's and the library's
// console is quiet by default (QUIET_CONSOLE), `run`'s and `demo`'s is not, and the user's
// words win — --verbose-console, a --cmdline of their own, an --append after ours.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { machineConfig } from '../../../vmm/cli-options';
import { DEFAULT_CMDLINE, QUIET_CONSOLE } from '../../../vmm/config';

const cmdline = async (values: Record<string, unknown>, use: 'run' | 'exec' | 'demo') => (await machineConfig(values, () => {}, use)).cmdline;

test('exec boots with a quiet console unless asked; run and demo show the boot', async () => {
  assert.is(await cmdline({}, 'exec'), `${DEFAULT_CMDLINE} ${QUIET_CONSOLE}`);
  assert.is(await cmdline({ 'verbose-console': true }, 'exec'), DEFAULT_CMDLINE);
  assert.is(await cmdline({}, 'run'), DEFAULT_CMDLINE);
  assert.is(await cmdline({}, 'demo'), DEFAULT_CMDLINE);
});

test('--append comes after the quiet level (loglevel=7 overrides it); --cmdline is taken as it is', async () => {
  assert.is(await cmdline({ append: ['loglevel=7'] }, 'exec'), `${DEFAULT_CMDLINE} ${QUIET_CONSOLE} loglevel=7`);
  assert.is(await cmdline({ cmdline: 'console=ttyS0 panic=1' }, 'exec'), 'console=ttyS0 panic=1');
  assert.is(await cmdline({ cmdline: 'console=ttyS0', append: ['quiet'] }, 'exec'), 'console=ttyS0 quiet');
});

test.run();
