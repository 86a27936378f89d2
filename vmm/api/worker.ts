// The control API's HTTP thread, as Firecracker's api_server thread: it owns the Unix socket
// and all of HTTP — node:http's parser, the header and request timeouts, the connection limit,
// body limits, malformed requests (answered here, never a reason to end the process) — and
// hands each request it has read whole and checked to the main thread as one message; main's
// answer comes back as one message and is written here. So a client costs the main thread
// (the VMM's device and exit work) one message each way, whatever it sends or how slowly.
// POST /agent with `Upgrade: tsvmm-agent` from the owner (SO_PEERCRED) is handed to main as
// a duplicate of the connection's descriptor: exec's bytes never cross between threads.
// The socket file is bound here (devices/socket-path.ts: owner-only, never replacing what is
// not a stale socket of ours); main removes it at close and at exit while it is still ours.
// The describe GETs (GET /, /machine-config, /vm/config, /version) are answered here from the
// latest snapshot main published, never an older one than main's last publication before the
// request was read (http.ts: the consistency rule): they cost main nothing.

import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import { listenOwned, type OwnSocket } from '../../devices/socket-path';
import { dupCloexec, peerCredentials, setThreadName } from '../../kvm/libc';
import { AGENT_UPGRADE, bodyLimitOf, faultAnswer, rawFaultText, STAT_CONNECTIONS, STAT_SNAPSHOT, STREAM_CREDIT, type ApiThreadInit, type MainMessage, type Snapshot, type ThreadMessage, type WireAnswer } from './wire';

const init = workerData as ApiThreadInit;
const port = parentPort!;
const post = (m: ThreadMessage, transfer?: ArrayBuffer[]) => port.postMessage(m, transfer);
const log = (message: string) => post({ type: 'log', message });

/** Requests sent to main and not answered yet. */
const pending = new Map<number, { req: IncomingMessage; res: ServerResponse }>();
/** Answers main streams: bytes received since the last credit given back. */
const streams = new Map<number, { res: ServerResponse; unacked: number }>();
let nextId = 1;
const sockets = new Set<Socket>();

/** The newest snapshot of the describe answers taken off the port. */
let snapshot: Snapshot = init.snapshot;
const snapshots = init.snapshotPort;
const takeSnapshot = (s: Snapshot) => {
  if (s.version > snapshot.version) snapshot = s;
};
// Taken as they come, so they do not pile up; the port must not keep the thread alive.
snapshots.on('message', takeSnapshot);
snapshots.unref();

/**
 * The describe answer to GET `path` as of main's last publication (read now, after the request
 * was), or undefined: not a describe path, or no snapshot that recent (cannot happen: main posts
 * before it publishes the version) — main answers then.
 */
function describeAnswer(path: string): WireAnswer | undefined {
  const want = Atomics.load(init.stats, STAT_SNAPSHOT);
  while (snapshot.version < want) {
    const m = receiveMessageOnPort(snapshots);
    if (!m) break;
    takeSnapshot(m.message as Snapshot);
  }
  if (snapshot.version < want || !Object.hasOwn(snapshot.answers, path)) return undefined;
  return snapshot.answers[path];
}

function send(res: ServerResponse, status: number, body?: string, headers: Record<string, string | number> = {}): void {
  if (res.headersSent || res.destroyed) return;
  if (body === undefined) {
    res.writeHead(status, headers);
    res.end();
    return;
  }
  res.writeHead(status, { 'Content-Length': Buffer.byteLength(body), ...headers });
  res.end(body);
}

function fault(res: ServerResponse, status: number, message: string, extra: Record<string, string> = {}): void {
  const a = faultAnswer(status, message, extra);
  send(res, a.status, a.body, a.headers);
}

/** Answers, then closes the connection: its unread bytes would be parsed as the next request. */
function faultAndClose(req: IncomingMessage, res: ServerResponse, status: number, message: string): void {
  fault(res, status, message, { Connection: 'close' });
  res.on('finish', () => req.socket.destroy());
}

/** Reads the body up to `limit` bytes; undefined if it was larger. */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let over = false;
    req.on('data', (c: Buffer) => {
      if (over) return;
      size += c.length;
      if (size > limit) {
        over = true;
        chunks.length = 0;
        resolve(undefined);
      } else chunks.push(c);
    });
    req.on('end', () => {
      if (!over) resolve(Buffer.concat(chunks));
    });
    req.on('error', reject);
  });
}

/** The request target as a URL; only a path (origin-form, RFC 9112 §3.2.1) is accepted. */
function requestUrl(target: string | undefined): URL | undefined {
  if (target === undefined || !target.startsWith('/') || target.startsWith('//')) return undefined;
  try {
    return new URL(target, 'http://localhost');
  } catch {
    return undefined;
  }
}

async function serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const url = requestUrl(req.url);
  const method = req.method ?? 'GET';
  if (!url) return faultAndClose(req, res, 400, `request target ${JSON.stringify(String(req.url).slice(0, 64))} is not a path`);
  const limit = bodyLimitOf(init.bodyLimits, url.pathname);
  const tooLarge = () => faultAndClose(req, res, 413, `request body larger than ${limit} bytes`);
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > limit) return tooLarge();
  let raw: Buffer | undefined;
  try {
    raw = await readBody(req, limit);
  } catch {
    // The client went away in the middle of its body: nobody to answer.
    res.destroy();
    return;
  }
  if (raw === undefined) return tooLarge();
  let body: unknown;
  if (raw.length > 0) {
    const type = (req.headers['content-type'] ?? 'application/json').split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/json') return fault(res, 415, `Content-Type '${type}' is not supported: send application/json`);
    try {
      body = JSON.parse(raw.toString('utf8'));
    } catch (e) {
      return fault(res, 400, `request body is not valid JSON: ${(e as Error).message}`);
    }
  } else if (method === 'PUT' || method === 'PATCH') {
    return fault(res, 400, `${method} ${url.pathname}: the request needs a JSON body`);
  }
  if (res.destroyed) return;
  const known = method === 'GET' ? describeAnswer(url.pathname) : undefined;
  if (known) return send(res, known.status, known.body, known.headers);
  const id = nextId++;
  pending.set(id, { req, res });
  // A client that leaves before the answer: main's answer then finds nothing to write to.
  res.on('close', () => pending.delete(id));
  post({ type: 'request', id, method, path: url.pathname, search: url.search.slice(1), body, accept: String(req.headers.accept ?? '') });
}

function onMain(m: MainMessage): void {
  switch (m.type) {
    case 'response': {
      const p = pending.get(m.id);
      if (!p) return;
      pending.delete(m.id);
      send(p.res, m.status, m.body, m.headers);
      return;
    }
    case 'stream': {
      const p = pending.get(m.id);
      if (!p) {
        // Gone before its headers: main's sink hears it closed.
        post({ type: 'stream-closed', id: m.id });
        return;
      }
      pending.delete(m.id);
      const { req, res } = p;
      // A stream ends when the client hangs up: its shutdown ends it here too (the server lets
      // a half-closed connection finish its answers, and this one never finishes).
      if (req.socket.readableEnded) {
        res.destroy();
        post({ type: 'stream-closed', id: m.id });
        return;
      }
      req.socket.once('end', () => res.destroy());
      // No Content-Length: the body is chunked and ends when the client hangs up.
      res.writeHead(200, { 'Content-Type': m.contentType, 'Cache-Control': 'no-cache' });
      res.flushHeaders();
      const s = { res, unacked: 0 };
      streams.set(m.id, s);
      const credit = () => {
        if (s.unacked === 0 || !streams.has(m.id)) return;
        post({ type: 'ack', id: m.id, bytes: s.unacked });
        s.unacked = 0;
      };
      res.on('drain', credit);
      res.on('close', () => {
        streams.delete(m.id);
        post({ type: 'stream-closed', id: m.id });
      });
      return;
    }
    case 'chunk': {
      const s = streams.get(m.id);
      if (!s) return;
      s.unacked += m.data.length;
      // Credit goes back once a good part of it is out and the socket takes more; a full
      // socket gives it back at its drain.
      if (s.res.write(m.data) && s.unacked >= STREAM_CREDIT / 2) {
        post({ type: 'ack', id: m.id, bytes: s.unacked });
        s.unacked = 0;
      }
      return;
    }
    case 'close':
      void close();
      return;
  }
}

let own: OwnSocket | undefined;
const headersTimeout = init.headersTimeoutMs;
const server = createServer({
  headersTimeout,
  requestTimeout: Math.max(init.requestTimeoutMs, headersTimeout),
  // How often node looks for connections past those timeouts.
  connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(headersTimeout / 4))),
  keepAliveTimeout: 5_000,
}, (req, res) => {
  serve(req, res).catch((e: Error) => {
    // serve() answers every failure itself; this is the last line against a bug there.
    log(`api: request failed: ${e.stack ?? e.message}`);
    if (!res.headersSent) fault(res, 500, 'internal error');
    else res.destroy();
  });
});
server.on('connection', (s: Socket) => {
  sockets.add(s);
  Atomics.add(init.stats, STAT_CONNECTIONS, 1);
  s.on('close', () => {
    sockets.delete(s);
    Atomics.sub(init.stats, STAT_CONNECTIONS, 1);
  });
});
server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
  try {
    upgradeAgent(req, socket, head);
  } catch (e) {
    log(`api: agent upgrade failed: ${(e as Error).stack ?? (e as Error).message}`);
    socket.destroy();
  }
});
// A client that sends its request and then shuts down its side still gets its answer (the
// handler is a message away, on main): node then ends the connection after the last answer,
// instead of at the shutdown. (An undocumented switch of node:http's Server, in every version.)
(server as unknown as { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true;
server.maxConnections = init.maxConnections;
server.maxHeadersCount = 64;
server.on('error', (e) => log(`api: server error: ${e.message}`));

/**
 * POST /agent, Upgrade: tsvmm-agent → the connection goes to main (which answers 101 and pipes
 * it to a new agent connection, or refuses with a fault). Refused here for another path or
 * protocol, a server without an agent, or a peer that is not this process's user.
 */
function upgradeAgent(req: IncomingMessage, socket: Socket, head: Buffer): void {
  const url = requestUrl(req.url);
  if (!url || url.pathname !== '/agent' || req.method !== 'POST' || String(req.headers.upgrade ?? '').toLowerCase() !== AGENT_UPGRADE || !init.agent) {
    return void socket.end(rawFaultText(400, `only POST /agent may upgrade, to '${AGENT_UPGRADE}'`));
  }
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  const uid = fd === undefined || fd < 0 ? undefined : peerCredentials(fd).uid;
  if (uid === undefined || uid !== init.uid) {
    log(`api: refused the agent route to uid ${uid ?? 'unknown'} (only uid ${init.uid}, the VM's owner, may run commands in it)`);
    return void socket.end(rawFaultText(403, "the agent route is for the VM's owner only"));
  }
  // The handler runs synchronously from the parser's read: no byte past `head` has been read
  // from the descriptor, so main's duplicate starts exactly where this socket stops.
  const dup = dupCloexec(fd!);
  const bytes = new Uint8Array(head);
  post({ type: 'agent', fd: dup, head: bytes }, [bytes.buffer as ArrayBuffer]);
  socket.destroy();
}

let closing = false;
async function close(): Promise<void> {
  if (closing) return;
  closing = true;
  const done = new Promise<void>((r) => server.close(() => r()));
  for (const s of sockets) s.destroy();
  await done;
  own?.release();
  snapshots.close();
  post({ type: 'closed' });
  port.close();
}

async function main(): Promise<void> {
  setThreadName('tsvmm-api');
  try {
    own = await listenOwned(server, init.path);
  } catch (e) {
    post({ type: 'listen-failed', message: (e as Error).message });
    port.close();
    return;
  }
  // Until main has the device and inode, it cannot remove the file: it learns them first thing.
  const st = own.identity();
  port.on('message', onMain);
  post({ type: 'listening', dev: st.dev, ino: st.ino });
}

void main();
