// POST /agent (docs/api.md): the API socket upgraded to the guest agent's protocol, as
// `tsvmm exec --api-sock` uses it. The VM is the API tests' fake; its vsock port 52 leads to
// the real agent (guest/agent.c, run on this host with --unix), so what crosses the route is
// the real protocol: exec with streams and status, put with parents, get, several at once.
// The route is for the VM's owner only (SO_PEERCRED), whatever the socket's mode.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFile } from 'node:child_process';
import { chmodSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { AgentClient } from '../../../vmm/agent/client';
import { unixConnector } from '../../../vmm/agent/connect';
import { apiAgentConnector } from '../../../vmm/api/client';
import { startAgent, type RunningAgent } from '../agent/harness';
import { rig, type Rig } from './fake';
import { needs } from '../../needs';

let agent: RunningAgent;
let r: Rig;

test.before(async () => {
  agent = await startAgent();
  r = await rig({ attach: { vsock: { cid: 3, udsPath: '/nonexistent/v.sock' } } });
  r.ctl.machine!.vsockConnect = (port) => {
    assert.is(port, 52);
    return unixConnector(agent.sock)();
  };
});
test.after(async () => {
  await r?.close();
  await agent?.stop();
});

test('exec through the API: streams, status, put with parents, get', async () => {
  const client = new AgentClient(apiAgentConnector(r.sock));
  let out = '';
  let err = '';
  const res = await client.exec({ argv: ['sh', '-c', 'read x; echo "got $x"; echo oops >&2; exit 3'], stdin: 'line\n', onStdout: (b) => (out += b), onStderr: (b) => (err += b) });
  assert.equal(res, { exitCode: 3, signal: null, coreDumped: false });
  assert.is(out, 'got line\n');
  assert.is(err, 'oops\n');
  const target = join(agent.dir, 'via/api/f');
  await client.put(Buffer.from('through the API\n'), target, 0o644, { mkdirs: true });
  assert.is((await client.get(target)).toString(), 'through the API\n');
  assert.is(readFileSync(target, 'utf8'), 'through the API\n');
});

test('several execs at once, each with its own output', async () => {
  const client = new AgentClient(apiAgentConnector(r.sock));
  const runs = await Promise.all([1, 2, 3, 4, 5].map(async (i) => {
    let out = '';
    const res = await client.exec({ argv: ['sh', '-c', `sleep 0.2; echo run-${i}; exit ${i}`], onStdout: (b) => (out += b) });
    return { i, out, code: res.exitCode };
  }));
  for (const x of runs) {
    assert.is(x.out, `run-${x.i}\n`);
    assert.is(x.code, x.i);
  }
});

test('a VM without vsock answers 400, not an upgrade', async () => {
  const plain = await rig({ attach: {} });
  try {
    const client = new AgentClient(apiAgentConnector(plain.sock));
    try {
      await client.ping();
      assert.unreachable('should have thrown');
    } catch (e) {
      assert.match((e as Error).message, /POST \/agent: 400: this VM has no vsock device/);
    }
  } finally {
    await plain.close();
  }
});

needs(process.getuid?.() === 0 ? undefined : 'needs root, to connect as another user')('another user is refused (403), even through a socket anyone may open', async () => {
  // Open the socket and its directory to everyone: only the peer check stands in the way.
  chmodSync(r.dir, 0o755);
  chmodSync(r.sock, 0o666);
  const script = `
    const http = require('node:http');
    const req = http.request({ socketPath: ${JSON.stringify(r.sock)}, method: 'POST', path: '/agent', headers: { Connection: 'Upgrade', Upgrade: 'tsvmm-agent' } });
    req.on('upgrade', () => { console.log('UPGRADED'); process.exit(0); });
    req.on('response', (res) => { let b = ''; res.on('data', (c) => (b += c)); res.on('end', () => { console.log(res.statusCode, b.trim()); process.exit(0); }); });
    req.on('error', (e) => { console.log('ERROR', e.message); process.exit(0); });
    req.end();`;
  const { stdout } = await promisify(execFile)(process.execPath, ['-e', script], { uid: 65534, gid: 65534, encoding: 'utf8' });
  assert.match(stdout, /^403 \{"fault_message":"the agent route is for the VM's owner only"\}/);
  // The owner still gets through.
  assert.is((await new AgentClient(apiAgentConnector(r.sock)).exec({ argv: ['true'] })).exitCode, 0);
});

test.run();
