// tsvmm as a library, used as a user would: a scratch project installs the packed tarball of
// this checkout (npm pack; its dependencies packed from node_modules, installed offline), a
// TypeScript program imports `tsvmm` by name, type-checks against the package's declarations
// (tsc, NodeNext, strict) and, compiled, boots the default guest with `await using`, runs
// commands, puts and gets a file, reads the control API in-process, hears the console and the
// exit, and shuts down. Nothing of the checkout is on its paths: the package finds its worker,
// scripts and guest sources by itself, and falls back to a writable directory where the cache
// is read-only (the sandbox shares it read-only).

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { needs, missingCommand } from '../needs';
import { ROOT } from './helpers';

const dir = mkdtempSync(join(tmpdir(), 'tsvmm-lib-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));
const npmEnv = { ...process.env, npm_config_cache: join(dir, 'npm-cache'), npm_config_update_notifier: 'false' };

/** `npm pack` of a directory into `dir/pkgs`; returns the tarball's path. */
function pack(from: string): string {
  const out = execFileSync('npm', ['pack', '--ignore-scripts', '--silent', '--pack-destination', join(dir, 'pkgs'), from], { env: npmEnv, encoding: 'utf8' });
  return join(dir, 'pkgs', out.trim().split('\n').pop()!);
}

const PROGRAM = `import { Vm, type ExecResult, type ExitStatus } from 'tsvmm';
import { readFileSync, writeFileSync } from 'node:fs';

let consoleBytes = 0;
let exit: ExitStatus | undefined;
const report: Record<string, unknown> = {};
{
  await using vm = await Vm.boot({ vcpus: 2, memory: '256M' });
  vm.on('console', (b: Buffer) => (consoleBytes += b.length));
  vm.on('exit', (s: ExitStatus) => (exit = s));
  const r: ExecResult = await vm.exec(['uname', '-r'], { timeoutMs: 60_000 });
  report.uname = r;
  writeFileSync('t.sh', 'echo "hello $1 from $(pwd)"\\n');
  await vm.put('./t.sh', '/root/scripts/t.sh');
  report.script = await vm.exec(['sh', '/root/scripts/t.sh', 'user'], { cwd: '/root', env: { X: '1' } });
  report.stdin = await vm.exec('tr a-z A-Z', { stdin: 'shout\\n' });
  report.failed = await vm.exec('echo oops >&2; exit 4');
  await vm.exec('echo back >/root/back.txt');
  await vm.get('/root/back.txt', 'back.txt');
  report.got = readFileSync('back.txt', 'utf8');
  report.vcpus = (await vm.api.request('GET', '/machine-config')).body;
  report.timedOut = await vm.exec(['sleep', '60'], { timeoutMs: 1000 });
  await vm.exec('echo to-the-console >/dev/console');
  report.id = vm.id;
}
report.consoleBytes = consoleBytes;
report.exit = exit;
console.log(JSON.stringify(report));
`;

const TSCONFIG = {
  compilerOptions: {
    target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', lib: ['ES2022', 'ESNext.Disposable'],
    types: ['node'], typeRoots: [join(ROOT, 'node_modules/@types')], strict: true, outDir: 'out', skipLibCheck: false,
  },
  files: ['main.ts'],
};

interface Run {
  status: number;
  signal: string | null;
  timedOut: boolean;
  stdout: string;
  stderr: string;
}
interface Report {
  uname: Run;
  script: Run;
  stdin: Run;
  failed: Run;
  got: string;
  vcpus: { vcpu_count: number };
  timedOut: Run;
  id: string;
  consoleBytes: number;
  exit: unknown;
}

needs(missingCommand('npm'))('a scratch project installs the tarball, imports tsvmm by name, boots, execs, copies, shuts down', async () => {
  mkdirSync(join(dir, 'pkgs'));
  const tarballs = [
    pack(ROOT),
    pack(join(ROOT, 'node_modules/koffi')),
    pack(join(ROOT, 'node_modules/nanoid')),
    ...readdirSync(join(ROOT, 'node_modules/@koromix')).map((p) => pack(join(ROOT, 'node_modules/@koromix', p))),
  ];
  const project = join(dir, 'project');
  mkdirSync(project);
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'scratch', private: true, type: 'module' }));
  execFileSync('npm', ['install', '--offline', '--no-audit', '--no-fund', ...tarballs], { cwd: project, env: npmEnv, stdio: ['ignore', 'ignore', 'inherit'] });
  assert.ok(existsSync(join(project, 'node_modules/tsvmm/dist/index.d.ts')), 'the package carries its declarations');
  writeFileSync(join(project, 'main.ts'), PROGRAM);
  writeFileSync(join(project, 'tsconfig.json'), JSON.stringify(TSCONFIG));
  const tsc = spawnSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', project], { cwd: project, encoding: 'utf8' });
  assert.is(tsc.status, 0, `tsc: ${tsc.stdout}${tsc.stderr}`);
  const run = spawnSync(process.execPath, ['out/main.js'], { cwd: project, encoding: 'utf8', timeout: 600_000 });
  assert.is(run.status, 0, `${run.stdout}\n${run.stderr}`);
  const r = JSON.parse(run.stdout.trim().split('\n').pop()!) as Report;
  assert.equal(r.uname.status, 0);
  assert.match(r.uname.stdout, /^\d+\.\d+\.\d+-\d+-amd64\n$/);
  assert.equal(r.script, { status: 0, signal: null, timedOut: false, stdout: 'hello user from /root\n', stderr: '' });
  assert.is(r.stdin.stdout, 'SHOUT\n');
  assert.equal([r.failed.status, r.failed.stderr], [4, 'oops\n']);
  assert.is(r.got, 'back\n');
  assert.is(r.vcpus.vcpu_count, 2);
  assert.equal([r.timedOut.timedOut, r.timedOut.signal, r.timedOut.status], [true, 'SIGKILL', 137]);
  assert.match(r.id, /\S+/);
  assert.ok(r.consoleBytes > 0, 'console events came');
  assert.equal(r.exit, { code: 0, reason: 'poweroff', detail: 'stopped by its owner' });
});

test.run();
