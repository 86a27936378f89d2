// virtio-vsock with the stock kernel's driver and Firecracker's host protocol: bulk data both
// ways with matching SHA-256, 200 concurrent connections, and failures that end one connection
// only (a client dying before its CONNECT line, a port nobody listens on).

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash, randomBytes } from 'node:crypto';
import { createConnection } from 'node:net';
import { agentOf, startVm, vsockConnect } from './helpers';
import type { AgentClient } from '../../vmm/agent/client';

const MiB = 1024 * 1024;
let vm: Awaited<ReturnType<typeof startVm>>;
let agent: AgentClient;

test.before(async () => {
  vm = await startVm(['--memory', '512M', '--vcpus', '2', '--quiet']);
  agent = await agentOf(vm.uds);
});

test.after(async () => {
  await vm.stop();
});

async function run(argv: string[], stdin?: Uint8Array): Promise<{ code: number | null; out: Buffer; err: string }> {
  const out: Buffer[] = [];
  let err = '';
  const r = await agent.exec({ argv, stdin, onStdout: (c) => out.push(c), onStderr: (c) => (err += c) });
  return { code: r.exitCode, out: Buffer.concat(out), err };
}

test('64 MiB host → guest arrive intact (SHA-256)', async () => {
  const data = randomBytes(64 * MiB);
  const r = await run(['sha256sum'], data);
  assert.is(r.code, 0, r.err);
  assert.is(r.out.toString().split(' ')[0], createHash('sha256').update(data).digest('hex'));
});

test('64 MiB guest → host arrive intact (SHA-256)', async () => {
  const r = await run(['sh', '-c', 'head -c 67108864 /dev/urandom > /tmp/blob && cat /tmp/blob && sha256sum /tmp/blob >&2 && rm /tmp/blob']);
  assert.is(r.code, 0, r.err);
  assert.is(r.out.length, 64 * MiB);
  assert.is(r.err.split(' ')[0], createHash('sha256').update(r.out).digest('hex'));
});

test('200 concurrent connections', async () => {
  const results = await Promise.all(Array.from({ length: 200 }, (_, i) => run(['sh', '-c', `sleep 1; echo ${i}`])));
  results.forEach((r, i) => {
    assert.is(r.code, 0, r.err);
    assert.is(r.out.toString(), `${i}\n`);
  });
});

test('a client that dies before its CONNECT line, or names a dead port, ends alone', async () => {
  const dying = createConnection(vm.uds);
  await new Promise((r) => dying.once('connect', r));
  dying.write('CONNE');
  dying.destroy();
  let refused = false;
  try {
    await vsockConnect(vm.uds, 9999, 20_000);
  } catch {
    refused = true;
  }
  assert.ok(refused, 'CONNECT to a port nobody listens on must fail');
  const r = await run(['echo', 'still fine']);
  assert.is(r.out.toString(), 'still fine\n');
});

test('a guest process killed mid-stream ends its connection only', async () => {
  const big = agent.start({ argv: ['cat', '/dev/zero'], onStdout: () => {} });
  const pid = await big.pid;
  await run(['kill', '-9', String(pid)]);
  const res = await big.result;
  assert.is(res.signal, 'SIGKILL');
  const r = await run(['echo', 'ok']);
  assert.is(r.out.toString(), 'ok\n');
});

test.run();
