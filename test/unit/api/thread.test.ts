// The API's HTTP runs on a thread of its own (vmm/api/worker.ts): requests are read, checked and
// refused there, and the describe GETs (/, /machine-config, /vm/config, /version) answered from
// main's last published snapshot, so a main thread busy with the VM's work does not delay the
// answers that need nothing of it, and a main thread that is free pays one message per request. POST /agent is
// handed over as a duplicate descriptor: the pipe to the agent runs on main, not through the
// thread.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import * as net from 'node:net';
import { unixConnector } from '../../../vmm/agent/connect';
import { decodePong, encodeHello, encodePing, FrameDecoder, Msg } from '../../../vmm/agent/protocol';
import { apiCall } from '../../../vmm/api/client';
import { startAgent } from '../agent/harness';
import { join } from 'node:path';
import { Control } from '../../../vmm/api/control';
import { VMM_VERSION } from '../../../vmm/api/resources';
import { fakeKernel, FakeMachine, rawExchange, rig, tmp } from './fake';

/** Blocks this thread's event loop (sleeping, not spinning) for `ms`. */
function blockMain(ms: number): { from: number; to: number } {
  const from = Date.now();
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
  return { from, to: Date.now() };
}

// Another process (the server's thread must not be helped by this one's event loop): argv[2]
// is a JSON object of raw requests by key, each sent on a connection of its own on "go";
// prints when each answer arrived (wall clock, ms), its status and its body.
const CLIENT = `
import json, socket, sys, threading, time
def ask(req, key):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    go.wait()
    s.sendall(req)
    got = b''
    while True:
        d = s.recv(4096)
        if not d:
            break
        got += d
    head, _, body = got.partition(b'\\r\\n\\r\\n')
    out[key] = {'at': time.time() * 1000, 'status': int(got.split(b' ')[1]) if got else 0, 'body': body.decode()}
    s.close()
go = threading.Event()
out = {}
ts = [threading.Thread(target=ask, args=(req.encode(), key)) for key, req in json.loads(sys.argv[2]).items()]
for t in ts:
    t.start()
print('ready', flush=True)
sys.stdin.readline()
go.set()
for t in ts:
    t.join()
print(json.dumps(out), flush=True)
`;

const close = 'Host: x\r\nConnection: close\r\n';
const get = (path: string) => `GET ${path} HTTP/1.1\r\n${close}\r\n`;

interface Answer { at: number; status: number; body: string }

/** Sends `requests` from another process while main is blocked 1.5 s: each answer, and the block's span. */
async function askWhileBlocked<K extends string>(sock: string, requests: Record<K, string>): Promise<{ res: Record<K, Answer>; blocked: { from: number; to: number } }> {
  const py = spawn('python3', ['-c', CLIENT, sock, JSON.stringify(requests)], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  py.stdout.setEncoding('utf8').on('data', (d) => (out += d));
  await new Promise<void>((resolve) => py.stdout.on('data', () => out.includes('ready') && resolve()));
  // libuv writes to an idle pipe at once: "go" has left before main blocks.
  py.stdin.write('go\n');
  const blocked = blockMain(1500);
  await new Promise<void>((resolve) => py.on('close', () => resolve()));
  return { res: JSON.parse(out.slice(out.indexOf('{'))) as Record<K, Answer>, blocked };
}

test('requests are parsed on the HTTP thread: with main blocked, malformed ones and GET / are answered; GET /scheduler waits for main', async () => {
  const r = await rig();
  try {
    // The thread is there, named.
    const names = readdirSync('/proc/self/task').map((t) => { try { return readFileSync(`/proc/self/task/${t}/comm`, 'utf8').trim(); } catch { return ''; } });
    assert.ok(names.includes('tsvmm-api'), names.join(','));
    const { res, blocked } = await askWhileBlocked(r.sock, {
      get: get('/'),
      bad: get('*'),
      json: `PUT /machine-config HTTP/1.1\r\n${close}Content-Type: application/json\r\nContent-Length: 5\r\n\r\n{"a":`,
      sched: get('/scheduler'),
    });
    assert.is(res.bad.status, 400);
    assert.is(res.json.status, 400);
    assert.ok(res.bad.at < blocked.to, `the bad request line answered while main was blocked (${res.bad.at - blocked.from} ms into ${blocked.to - blocked.from} ms)`);
    assert.ok(res.json.at < blocked.to, `the bad JSON answered while main was blocked (${res.json.at - blocked.from} ms into ${blocked.to - blocked.from} ms)`);
    assert.is(res.get.status, 200);
    assert.ok(res.get.at < blocked.to, `GET / answered by the thread while main was blocked (${res.get.at - blocked.from} ms into ${blocked.to - blocked.from} ms)`);
    assert.equal(JSON.parse(res.get.body), { id: 'testvm', state: 'Not started', vmm_version: VMM_VERSION, app_name: 'tsvmm' });
    assert.is(res.sched.status, 200);
    assert.ok(res.sched.at >= blocked.to - 2, `GET /scheduler (main's handler) answered only after main was free (${res.sched.at - blocked.to} ms after)`);
  } finally {
    await r.close();
  }
});

test('the describe GETs answered by the thread show the last change main completed: PUT /machine-config, /boot-source, InstanceStart', async () => {
  const r = await rig();
  try {
    // A change answered 204 is seen by the next GET, every time.
    for (let n = 1; n <= 40; n++) {
      assert.is((await apiCall(r.sock, 'PUT', '/machine-config', { vcpu_count: n, mem_size_mib: 64 + n })).status, 204);
      assert.equal(JSON.parse((await apiCall(r.sock, 'GET', '/machine-config')).text), { vcpu_count: n, mem_size_mib: 64 + n, smt: false });
    }
    // A refused change publishes nothing new.
    const version = r.server.snapshotVersion;
    assert.is((await apiCall(r.sock, 'PUT', '/machine-config', { vcpu_count: 0, mem_size_mib: 64 })).status, 400);
    assert.is(r.server.snapshotVersion, version);
    assert.is((await apiCall(r.sock, 'PUT', '/machine-config', { vcpu_count: 3, mem_size_mib: 96 })).status, 204);
    assert.is((await apiCall(r.sock, 'PUT', '/boot-source', { kernel_image_path: r.kernel, boot_args: 'console=ttyS0 quiet' })).status, 204);
    assert.is((await apiCall(r.sock, 'PUT', '/actions', { action_type: 'InstanceStart' })).status, 204);
    assert.is(r.starts.length, 1);
    const { res, blocked } = await askWhileBlocked(r.sock, {
      root: get('/'), mc: get('/machine-config'), vm: get('/vm/config?x=1'), version: get('/version'),
    });
    for (const [k, a] of Object.entries(res)) {
      assert.is(a.status, 200, k);
      assert.ok(a.at < blocked.to, `${k} answered by the thread while main was blocked (${a.at - blocked.from} ms into ${blocked.to - blocked.from} ms)`);
    }
    assert.is(JSON.parse(res.root.body).state, 'Running');
    assert.equal(JSON.parse(res.mc.body), { vcpu_count: 3, mem_size_mib: 96, smt: false });
    const vm = JSON.parse(res.vm.body);
    assert.is(vm['boot-source'].boot_args, 'console=ttyS0 quiet');
    assert.equal(JSON.parse(res.version.body), { vmm_version: VMM_VERSION, app_name: 'tsvmm' });
    // Byte for byte what main's own handler answers (the one serializer).
    const mainSays = async (path: string) => {
      const a = await r.ctl.handle({ method: 'GET', path, query: new URLSearchParams(), body: undefined, accept: '' });
      return JSON.stringify((a as { json: unknown }).json) + '\n';
    };
    assert.is(res.root.body, await mainSays('/'));
    assert.is(res.mc.body, await mainSays('/machine-config'));
    assert.is(res.vm.body, await mainSays('/vm/config'));
    assert.is(res.version.body, await mainSays('/version'));
    // The methods the describe paths do not have are still main's to refuse.
    const del = await apiCall(r.sock, 'DELETE', '/');
    assert.is(del.status, 405);
  } finally {
    await r.close();
  }
});

test('a machine started from the command line: Control publishes it, and GET / says Running from the thread', async () => {
  const dir = tmp();
  const sock = join(dir, 'api.sock');
  const kernel = fakeKernel(dir);
  const control = await Control.open<FakeMachine>({ 'api-sock': sock, quiet: true }, () => Promise.reject(new Error('not through the API')));
  try {
    assert.is(JSON.parse((await apiCall(sock, 'GET', '/')).text).state, 'Not started');
    control.attach(new FakeMachine({ kernel, cmdline: 'console=ttyS0', vcpus: 2, memory: 64 << 20, acpi: true, pin: 'none' }));
    const { res, blocked } = await askWhileBlocked(sock, { root: get('/'), mc: get('/machine-config') });
    assert.ok(res.root.at < blocked.to, `GET / answered by the thread while main was blocked (${res.root.at - blocked.from} ms into ${blocked.to - blocked.from} ms)`);
    assert.is(JSON.parse(res.root.body).state, 'Running');
    assert.equal(JSON.parse(res.mc.body), { vcpu_count: 2, mem_size_mib: 64, smt: false });
  } finally {
    await control.close();
  }
});

test('a client that shuts down its side after the request still gets the answer from main', async () => {
  const r = await rig();
  try {
    for (const req of ['GET / HTTP/1.1\r\nHost: x\r\n\r\n', 'GET /vm/config HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n']) {
      const reply = await rawExchange(r.sock, req, { halfClose: true });
      const statuses = [...reply.matchAll(/HTTP\/1\.1 (\d{3})/g)].map((m) => Number(m[1]));
      assert.equal(statuses, req.split('GET ').length === 2 ? [200] : [200, 200], reply);
    }
  } finally {
    await r.close();
  }
});

test('POST /agent: the connection is handed to main as a descriptor, with the bytes sent along with the request', async () => {
  const agent = await startAgent();
  const r = await rig({ attach: { vsock: { cid: 3, udsPath: '/nonexistent/v.sock' } } });
  r.ctl.machine!.vsockConnect = () => unixConnector(agent.sock)();
  try {
    const c = net.connect(r.sock);
    await new Promise<void>((resolve, reject) => c.once('connect', resolve).once('error', reject));
    // The agent's first frames in the same write as the request: the thread's parser reads
    // them with the headers, and they must reach the agent from main.
    c.write(Buffer.concat([
      Buffer.from('POST /agent HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tsvmm-agent\r\n\r\n'),
      encodeHello(), encodePing(0x1234_5678_9abcn),
    ]));
    let buf = Buffer.alloc(0);
    const frames: number[] = [];
    let pong: { nonce: bigint } | undefined;
    const dec = new FrameDecoder();
    const seen = new Promise<void>((resolve, reject) => {
      c.on('data', (d: Buffer) => {
        if (frames.length === 0 && !buf.includes('\r\n\r\n')) {
          buf = Buffer.concat([buf, d]);
          const end = buf.indexOf('\r\n\r\n');
          if (end < 0) return;
          assert.match(buf.subarray(0, end).toString(), /^HTTP\/1.1 101 Switching Protocols/);
          d = buf.subarray(end + 4);
        }
        for (const f of dec.push(d)) {
          frames.push(f.type);
          if (f.type === Msg.PONG) {
            pong = decodePong(f);
            resolve();
          }
        }
      });
      c.on('error', reject);
      c.on('close', () => reject(new Error(`closed; frames ${frames.join(',')}; ${buf.toString()}`)));
    });
    await seen;
    assert.equal(frames, [Msg.HELLO_ACK, Msg.PONG]);
    assert.is(pong!.nonce, 0x1234_5678_9abcn);
    // The HTTP thread let go of it (its close lands in the thread's next turn): the pipe is
    // main's alone, and the thread still answers.
    for (let i = 0; i < 100 && r.server.connections > 0; i++) await new Promise((res) => setTimeout(res, 10));
    assert.is(r.server.connections, 0);
    assert.is((await apiCall(r.sock, 'GET', '/')).status, 200);
    c.destroy();
  } finally {
    await r.close();
    await agent.stop();
  }
});

test('the API thread dies: fatal as in Firecracker — logged, a running VM stopped with status 1, the socket removed at close; under --wait the wait fails', async () => {
  const dir = tmp();
  const sock = join(dir, 'api.sock');
  const logPath = join(dir, 'vmm.log');
  const kernel = fakeKernel(dir);
  const control = await Control.open<FakeMachine>({ 'api-sock': sock, 'log-path': logPath }, () => Promise.reject(new Error('not through the API')));
  const m = new FakeMachine({ kernel, cmdline: 'console=ttyS0', vcpus: 1, memory: 64 << 20, acpi: true, pin: 'none' });
  control.attach(m);
  assert.is((await apiCall(sock, 'GET', '/')).status, 200);
  // Its end, as an uncaught error there would end it.
  await (control as unknown as { api: { worker: { terminate(): Promise<number> } } }).api.worker.terminate();
  const status = await m.exited;
  assert.is(status.code, 1);
  assert.is(status.reason, 'error');
  assert.match(status.detail, /the API thread died \(it exited with code 1\): the VM cannot be controlled through .*api\.sock any more/);
  assert.ok(existsSync(sock), 'the socket file stays until close');
  await control.close();
  assert.not.ok(existsSync(sock), 'close removed the socket file');
  assert.match(readFileSync(logPath, 'utf8'), /the API thread died/);

  const sock2 = join(dir, 'api2.sock');
  const waiting = await Control.open<FakeMachine>({ 'api-sock': sock2, wait: true, quiet: true }, () => Promise.reject(new Error('no KVM here')));
  const started = waiting.waitForStart();
  await (waiting as unknown as { api: { worker: { terminate(): Promise<number> } } }).api.worker.terminate();
  try {
    await started;
    assert.unreachable('waitForStart returned');
  } catch (e) {
    assert.match((e as Error).message, /the API thread died/);
  }
  await waiting.close();
  assert.not.ok(existsSync(sock2));
});

test.run();
