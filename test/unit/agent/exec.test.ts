// The real agent (built from guest/ with its Makefile, listening on a Unix socket) driven
// through vmm/agent/client: exec status, signals, streams, stdin flow control, put/get.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash, randomBytes } from 'node:crypto';
import { statSync, writeFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Duplex, Readable } from 'node:stream';
import { AgentClient, AgentError } from '../../../vmm/agent/client';
import { unixConnector } from '../../../vmm/agent/connect';
import { FEATURE_PUT_MKDIRS, HEADER_SIZE, Msg } from '../../../vmm/agent/protocol';
import { alive, startAgent, withTimeout, type RunningAgent } from './harness';

let agent: RunningAgent;

test.before(async () => {
  agent = await startAgent();
});
test.after(async () => {
  await agent?.stop();
});

/** The agent behind `s` as an agent from before HELLO_ACK carried features: that field reads 0. */
function olderAgent(s: Duplex): Duplex {
  let first = true;
  const out = new Duplex({
    write(chunk: Buffer, _enc, cb) {
      s.write(chunk, cb);
    },
    read() {
      s.resume();
    },
    final(cb) {
      s.end();
      cb();
    },
    destroy(err, cb) {
      s.destroy();
      cb(err);
    },
  });
  s.on('data', (chunk: Buffer) => {
    if (first && chunk.readUInt16LE(0) === Msg.HELLO_ACK) chunk.writeUInt16LE(0, HEADER_SIZE + 6);
    first = false;
    if (!out.push(chunk)) s.pause();
  });
  s.on('end', () => out.push(null));
  s.on('close', () => out.destroy());
  return out;
}

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

async function run(argv: string[], stdin?: Buffer | Readable): Promise<{ out: Buffer; err: Buffer; exitCode: number | null; signal: string | null }> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const r = await withTimeout(
    agent.client.exec({ argv, stdin, onStdout: (b) => out.push(b), onStderr: (b) => err.push(b) }),
    30_000,
    argv.join(' '),
  );
  return { out: Buffer.concat(out), err: Buffer.concat(err), exitCode: r.exitCode, signal: r.signal };
}

test('ping answers with the agent version', async () => {
  const p = await agent.client.ping();
  assert.match(p.agent, /^tsvmm-agent \d+\.\d+\.\d+$/);
  assert.is(agent.client.agentVersion, p.agent);
});

test('exit codes 0, 3 and 255 come back as they are', async () => {
  for (const code of [0, 3, 255]) {
    const r = await run(['sh', '-c', `exit ${code}`]);
    assert.is(r.exitCode, code);
    assert.is(r.signal, null);
  }
});

test('a process killed by SIGKILL reports the signal', async () => {
  const h = agent.client.start({ argv: ['sleep', '100'] });
  const pid = await h.pid;
  assert.ok(pid > 1);
  const k = await run(['kill', '-KILL', String(pid)]);
  assert.is(k.exitCode, 0);
  const r = await withTimeout(h.result, 10_000, 'killed sleep');
  assert.equal(r, { exitCode: null, signal: 'SIGKILL', coreDumped: false });
});

test('aborting on the host delivers SIGTERM to the guest process group', async () => {
  const ac = new AbortController();
  const t0 = Date.now();
  // A background sleep in the same job must get the signal too.
  const out: Buffer[] = [];
  const p = agent.client.exec({
    argv: ['sh', '-c', 'sleep 100 & echo $!; wait; echo survived'],
    signal: ac.signal,
    onStdout: (b) => {
      out.push(b);
      ac.abort();
    },
  });
  const r = await withTimeout(p, 10_000, 'aborted exec');
  assert.is(r.exitCode, null);
  assert.is(r.signal, 'SIGTERM');
  assert.ok(Date.now() - t0 < 5000);
  const sleepPid = Number(Buffer.concat(out).toString().trim());
  assert.ok(sleepPid > 1);
  const end = Date.now() + 2000;
  while (alive(sleepPid) && Date.now() < end) await new Promise((res) => setTimeout(res, 20));
  assert.not.ok(alive(sleepPid), 'the background sleep got SIGTERM too');
});

test('kill() with another signal, and abort before start', async () => {
  const h = agent.client.start({ argv: ['sleep', '100'] });
  await h.pid;
  h.kill('SIGINT');
  assert.is((await withTimeout(h.result, 10_000, 'SIGINT')).signal, 'SIGINT');
  const ac = new AbortController();
  ac.abort();
  try {
    await agent.client.exec({ argv: ['true'], signal: ac.signal });
    assert.unreachable('should have thrown');
  } catch (e) {
    assert.instance(e, AgentError);
    assert.is((e as AgentError).code, 'ABORTED');
  }
});

test('stdout and stderr stay separate and ordered', async () => {
  const n = 3000;
  const r = await run(['sh', '-c', `i=1; while [ $i -le ${n} ]; do echo out$i; echo err$i >&2; i=$((i+1)); done`]);
  const want = (p: string): string => Array.from({ length: n }, (_, i) => `${p}${i + 1}\n`).join('');
  assert.is(r.exitCode, 0);
  assert.is(r.out.toString(), want('out'));
  assert.is(r.err.toString(), want('err'));
});

test('8 MiB of stdin through cat keeps its SHA-256 (Buffer and Readable)', async () => {
  const data = randomBytes(8 << 20);
  const a = await run(['cat'], data);
  assert.is(a.exitCode, 0);
  assert.is(a.out.length, data.length);
  assert.is(sha(a.out), sha(data));
  const pieces = Array.from({ length: 64 }, (_, i) => data.subarray(i * (128 << 10), (i + 1) * (128 << 10)));
  const b = await run(['sha256sum'], Readable.from(pieces));
  assert.is(b.out.toString().split(' ')[0], sha(data));
});

test('a child that never reads stdin does not stall the exec', async () => {
  const r = await run(['sh', '-c', 'exit 7'], randomBytes(4 << 20));
  assert.is(r.exitCode, 7);
});

test('argv, env and cwd reach the process', async () => {
  const r = await withTimeout(
    (async () => {
      const out: Buffer[] = [];
      const res = await agent.client.exec({
        argv: ['sh', '-c', 'printf "%s|%s|%s|%s" "$1" "$FOO" "$(pwd)" "$PATH"', 'sh', 'a b'],
        env: { FOO: 'bar baz' },
        cwd: agent.dir,
        clearEnv: true,
        onStdout: (b) => out.push(b),
      });
      return { res, out: Buffer.concat(out).toString() };
    })(),
    10_000,
    'env',
  );
  const [arg, foo, cwd, path] = r.out.split('|');
  assert.is(arg, 'a b');
  assert.is(foo, 'bar baz');
  assert.is(cwd, agent.dir);
  assert.ok(path.includes('/usr/bin'), 'a default PATH is given');
});

test('a missing command or cwd is a SPAWN error with errno', async () => {
  for (const opts of [{ argv: ['/nonexistent/cmd'] }, { argv: ['true'], cwd: '/nonexistent-dir' }]) {
    try {
      await agent.client.exec(opts);
      assert.unreachable('should have thrown');
    } catch (e) {
      assert.instance(e, AgentError);
      assert.is((e as AgentError).code, 'SPAWN');
      assert.is((e as AgentError).errno, 2);
      assert.ok((e as AgentError).remote);
    }
  }
});

test('concurrent execs run in parallel', async () => {
  const t0 = Date.now();
  const rs = await Promise.all(Array.from({ length: 10 }, (_, i) => run(['sh', '-c', 'sleep 0.5; echo $0; echo e$0 >&2; exit $0', String(i)])));
  const took = Date.now() - t0;
  rs.forEach((r, i) => {
    assert.is(r.exitCode, i);
    assert.is(r.out.toString(), `${i}\n`);
    assert.is(r.err.toString(), `e${i}\n`);
  });
  assert.ok(took < 4000, `10 x 0.5 s took ${took} ms`);
});

test('put then get round trip keeps bytes and mode', async () => {
  const data = randomBytes((3 << 20) + 17);
  const remote = join(agent.dir, 'put.bin');
  assert.is(await agent.client.put(data, remote, 0o640), data.length);
  assert.is(statSync(remote).mode & 0o7777, 0o640);
  assert.is(sha(readFileSync(remote)), sha(data));
  const back = await agent.client.get(remote);
  assert.is(sha(back), sha(data));

  const local = join(agent.dir, 'local.txt');
  writeFileSync(local, 'hello from a path\n');
  const remote2 = join(agent.dir, 'script.sh');
  await agent.client.put(local, remote2, 0o755);
  assert.is(statSync(remote2).mode & 0o7777, 0o755);
  assert.is((await agent.client.get(remote2)).toString(), 'hello from a path\n');

  await agent.client.put(Buffer.alloc(0), join(agent.dir, 'empty'), 0o600);
  assert.is((await agent.client.get(join(agent.dir, 'empty'))).length, 0);
});

test('get reads /proc files to EOF; put/get errors carry errno', async () => {
  const self = await agent.client.get('/proc/self/status');
  assert.match(self.toString(), /^Name:\s+tsvmm-agent/);
  const expectIo = async (p: Promise<unknown>, errno: number): Promise<void> => {
    try {
      await p;
      assert.unreachable('should have thrown');
    } catch (e) {
      assert.instance(e, AgentError);
      assert.is((e as AgentError).code, 'IO');
      assert.is((e as AgentError).errno, errno);
    }
  };
  await expectIo(agent.client.get(join(agent.dir, 'missing')), 2);
  await expectIo(agent.client.get(agent.dir), 21);
  await expectIo(agent.client.put(randomBytes(1 << 20), join(agent.dir, 'no/such/dir/f'), 0o644), 2);
  // The agent still works after those.
  assert.is((await run(['true'])).exitCode, 0);
});

test('put with mkdirs makes the missing parents (0755); a file in the way fails with ENOTDIR', async () => {
  assert.ok(agent.client.agentFeatures & FEATURE_PUT_MKDIRS, 'this agent announces PUT_MKDIRS');
  const target = join(agent.dir, 'made/by/put/f.txt');
  await agent.client.put(Buffer.from('deep\n'), target, 0o600, { mkdirs: true });
  assert.is(readFileSync(target, 'utf8'), 'deep\n');
  assert.is(statSync(join(agent.dir, 'made/by')).mode & 0o777, 0o755 & ~process.umask());
  writeFileSync(join(agent.dir, 'plain'), 'x');
  try {
    await agent.client.put(Buffer.from('y'), join(agent.dir, 'plain/sub/f'), 0o644, { mkdirs: true });
    assert.unreachable('should have thrown');
  } catch (e) {
    assert.instance(e, AgentError);
    assert.is((e as AgentError).code, 'IO');
    assert.is((e as AgentError).errno, 20);
  }
});

test('put with mkdirs to an agent without the feature runs mkdir -p through it', async () => {
  // An older agent: the same one, with the features of its HELLO_ACK read as 0 on the way.
  const old = new AgentClient(async () => {
    const s = await unixConnector(agent.sock)();
    return olderAgent(s);
  });
  const target = join(agent.dir, 'old/agent/f.txt');
  await old.put(Buffer.from('old\n'), target, 0o644, { mkdirs: true });
  assert.is(old.agentFeatures, 0);
  assert.is(readFileSync(target, 'utf8'), 'old\n');
});

test.run();
