// Raw mode on a real pseudo-terminal (test/pty-run.py) and the terminal's settings after each
// way a process holding it can end: this file runs itself as the process in the terminal.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { RawTerminal } from '../../../vmm/console/terminal';
import { projectRoot } from '../../../vmm/default-guest';
import { missingCommand, needs } from '../../needs';

const CHILD = 'TSVMM_RAW_CHILD';
const mode = process.env[CHILD];

if (mode !== undefined) {
  // In the terminal: raw mode through RawTerminal (or directly, for the control case), then
  // the way out under test.
  const raw = mode === 'unguarded-hup' ? (process.stdin.setRawMode(true), null) : RawTerminal.enter(process.stdin);
  process.stdout.write(`raw: ${spawnSync('stty', ['-g'], { stdio: ['inherit', 'pipe', 'ignore'], encoding: 'utf8' }).stdout.trim()}\n`);
  // The owner's contract for signals (vmm/cli.ts): stop, give the terminal back, go.
  if (raw) {
    process.on('SIGHUP', () => {
      raw.restore();
      process.exit(129);
    });
  }
  if (mode === 'restore') raw?.restore();
  if (mode === 'throw') throw new Error('boom');
  if (mode === 'exit') process.exit(3);
  if (mode === 'hup' || mode === 'unguarded-hup') process.kill(process.pid, 'SIGHUP');
  if (mode === 'term') process.kill(process.pid, 'SIGTERM');
  // A signal is handled on a later turn of the event loop: keep it turning until then.
  if (/hup|term/.test(mode)) setTimeout(() => {}, 10_000);
  // 'end': the event loop runs dry with the terminal still raw.
} else {
  const pty = join(projectRoot(), 'test/pty-run.py');
  /** Runs this file in a new terminal as `childMode`; its settings before, raw, after. */
  const inTerminal = (childMode: string) => {
    const r = spawnSync('python3', [pty, '24', '80', process.execPath, process.argv[1]!], {
      env: { ...process.env, [CHILD]: childMode }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000,
    });
    const field = (text: string, name: string) => new RegExp(`^${name}: (.*)$`, 'm').exec(text)?.[1]?.trim();
    return { before: field(r.stderr, 'stty-before'), raw: field(r.stdout, 'raw'), after: field(r.stderr, 'stty-after'), exit: Number(field(r.stderr, 'exit')), out: r.stdout + r.stderr };
  };
  const t = needs(missingCommand('python3', 'stty'));

  for (const [how, exit] of [['restore', 0], ['end', 0], ['exit', 3], ['throw', 1], ['term', 143], ['hup', 129]] as const) {
    t(`the terminal comes back after raw mode: ${how} (exit ${exit})`, () => {
      const r = inTerminal(how);
      assert.ok(r.before && r.raw && r.after, r.out);
      assert.is.not(r.raw, r.before, 'the terminal was raw');
      assert.is(r.after, r.before, r.out);
      assert.is(r.exit, exit, r.out);
    });
  }

  t('control: raw mode nobody restores outlives a SIGHUP (so the checks above can fail)', () => {
    const r = inTerminal('unguarded-hup');
    assert.is.not(r.after, r.before, r.out);
  });

  test.run();
}
