// The control API's HTTP/1.1 server over a Unix socket (node:http): the socket file (mode 0600,
// a stale one of ours replaced, removed at close and at process exit while it is still ours:
// devices/socket-path.ts),
// JSON bodies with a size limit, Firecracker-style errors ({"fault_message": …}), and limits
// against slow, many or malformed clients: no request can end the process.
// It owns framing only; what a path means is the handler's business (resources.ts). One
// request is not HTTP after its headers: POST /agent with `Upgrade: tsvmm-agent` (as Docker
// attaches to exec) turns the connection into a byte pipe to the guest agent, for the peer
// whose uid is this process's only (SO_PEERCRED), whatever the socket's mode.

import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import { peerCredentials } from '../../kvm/libc';

import { createServer, STATUS_CODES, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { listenOwned, type OwnSocket } from '../../devices/socket-path';
import { ApiError, bodyLimit, type ApiRequest, type ApiResponse } from './resources';
import { TsvmmError } from '../../lib/errors';
import { atExit } from '../../lib/process-hooks';

export class ApiSocketError extends TsvmmError {}

export interface ApiServerOptions {
  path: string;
  handle: (req: ApiRequest) => Promise<ApiResponse>;
  /** Time a client has to send its request headers (default 10 s). */
  headersTimeoutMs?: number;
  /** Time a client has to send its whole request (default 30 s). */
  requestTimeoutMs?: number;
  /** Concurrent connections; more are closed at once (default 64). */
  maxConnections?: number;
  /** Body size limit by path (default resources.bodyLimit). */
  bodyLimit?: (path: string) => number;
  log?: (message: string) => void;
  /** The other end of an upgraded POST /agent: a fresh connection to the guest agent. */
  agent?: () => Promise<Duplex>;
}

/** The Upgrade protocol name of POST /agent. */
export const AGENT_UPGRADE = 'tsvmm-agent';

export class ApiServer {
  private readonly sockets = new Set<import('node:net').Socket>();
  private readonly forgetAtExit: () => void;
  private closed = false;

  private constructor(private readonly server: Server, readonly path: string, private readonly own: OwnSocket) {
    server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    this.forgetAtExit = atExit(() => this.own.remove());
  }

  static async listen(opts: ApiServerOptions): Promise<ApiServer> {
    const headersTimeout = opts.headersTimeoutMs ?? 10_000;
    const server = createServer({
      headersTimeout,
      requestTimeout: Math.max(opts.requestTimeoutMs ?? 30_000, headersTimeout),
      // How often node looks for connections past those timeouts.
      connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(headersTimeout / 4))),
      keepAliveTimeout: 5_000,
    }, (req, res) => {
      serve(req, res, opts).catch((e: Error) => {
        // serve() answers every failure itself; this is the last line against a bug there.
        opts.log?.(`api: request failed: ${e.stack ?? e.message}`);
        if (!res.headersSent) fault(res, 500, 'internal error');
        else res.destroy();
      });
    });
    server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      upgradeAgent(req, socket, head, opts).catch((e: Error) => {
        opts.log?.(`api: agent upgrade failed: ${e.stack ?? e.message}`);
        socket.destroy();
      });
    });
    server.maxConnections = opts.maxConnections ?? 64;
    server.maxHeadersCount = 64;
    let own: OwnSocket;
    try {
      own = await listenOwned(server, opts.path);
    } catch (e) {
      throw new ApiSocketError(`--api-sock ${opts.path}: ${(e as Error).message}`);
    }
    server.on('error', (e) => opts.log?.(`api: server error: ${e.message}`));
    return new ApiServer(server, opts.path, own);
  }

  /** Stops listening, drops open connections and removes the socket file. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const done = new Promise<void>((r) => this.server.close(() => r()));
    for (const s of this.sockets) s.destroy();
    await done;
    this.own.remove();
    this.own.release();
    this.forgetAtExit();
  }
}

function send(res: ServerResponse, status: number, body?: unknown, extra: Record<string, string> = {}): void {
  if (res.headersSent) return;
  if (body === undefined) {
    res.writeHead(status, extra);
    res.end();
    return;
  }
  const text = JSON.stringify(body) + '\n';
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), ...extra });
  res.end(text);
}

function fault(res: ServerResponse, status: number, message: string, extra: Record<string, string> = {}): void {
  send(res, status, { fault_message: message }, extra);
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

async function serve(req: IncomingMessage, res: ServerResponse, opts: ApiServerOptions): Promise<void> {
  const url = requestUrl(req.url);
  const method = req.method ?? 'GET';
  if (!url) {
    // Unread bytes would be parsed as the next request: close after answering.
    fault(res, 400, `request target ${JSON.stringify(String(req.url).slice(0, 64))} is not a path`, { Connection: 'close' });
    res.on('finish', () => req.socket.destroy());
    return;
  }
  const limit = (opts.bodyLimit ?? bodyLimit)(url.pathname);
  const tooLarge = () => {
    // Unread bytes would be parsed as the next request: close the connection after answering.
    fault(res, 413, `request body larger than ${limit} bytes`, { Connection: 'close' });
    res.on('finish', () => req.socket.destroy());
  };
  try {
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > limit) return tooLarge();
    const raw = await readBody(req, limit);
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
    const r = await opts.handle({ method, path: url.pathname, query: url.searchParams, body, accept: String(req.headers.accept ?? '') });
    if (r.status === 204) return send(res, 204);
    if ('stream' in r) {
      // No Content-Length: the body is chunked and ends when the client hangs up.
      res.writeHead(200, { 'Content-Type': r.contentType, 'Cache-Control': 'no-cache' });
      res.flushHeaders();
      r.stream({ write: (line) => res.write(line), onDrain: (cb) => res.on('drain', cb), onClose: (cb) => res.on('close', cb) });
      return;
    }
    if ('text' in r) {
      res.writeHead(200, { 'Content-Type': r.contentType, 'Content-Length': Buffer.byteLength(r.text) });
      res.end(r.text);
      return;
    }
    send(res, 200, r.json);
  } catch (e) {
    const err = e as Error;
    if (e instanceof ApiError) return fault(res, e.status, e.message, e.allow ? { Allow: e.allow } : {});
    // tsvmm's own errors say in words what failed (bad input, a refused check, a failed step):
    // 400 with that message, as Firecracker answers a failed request; anything else is a bug.
    if (e instanceof TsvmmError) return fault(res, 400, err.message);
    opts.log?.(`api: ${method} ${url.pathname}: internal error: ${err.stack ?? err.message}`);
    fault(res, 500, `internal error: ${err.message}`);
  }
}

/** An HTTP error answer on a socket the HTTP layer has handed over, then the end of it. */
function rawFault(socket: Socket, status: number, message: string): void {
  const body = JSON.stringify({ fault_message: message }) + '\n';
  socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
}

/** The uid of the process at the other end of `socket` (a Unix socket), or undefined. */
function peerUid(socket: Socket): number | undefined {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (fd === undefined || fd < 0) return undefined;
  return peerCredentials(fd).uid;
}

/**
 * POST /agent, Upgrade: tsvmm-agent → 101, then the bytes flow both ways between the client and
 * a new agent connection (the agent protocol, docs/agent-protocol.md, one request per
 * connection). Refused with a JSON fault for another path or protocol, a peer that is not this
 * process's user, or a VM whose agent cannot be reached.
 */
async function upgradeAgent(req: IncomingMessage, socket: Socket, head: Buffer, opts: ApiServerOptions): Promise<void> {
  const url = requestUrl(req.url);
  if (!url || url.pathname !== '/agent' || req.method !== 'POST' || String(req.headers.upgrade ?? '').toLowerCase() !== AGENT_UPGRADE || !opts.agent) {
    return rawFault(socket, 400, `only POST /agent may upgrade, to '${AGENT_UPGRADE}'`);
  }
  const uid = peerUid(socket);
  if (uid === undefined || uid !== process.getuid?.()) {
    opts.log?.(`api: refused the agent route to uid ${uid ?? 'unknown'} (only uid ${process.getuid?.()}, the VM's owner, may run commands in it)`);
    return rawFault(socket, 403, "the agent route is for the VM's owner only");
  }
  let agent: Duplex;
  try {
    agent = await opts.agent();
  } catch (e) {
    return rawFault(socket, e instanceof ApiError ? e.status : 502, (e as Error).message);
  }
  socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${AGENT_UPGRADE}\r\n\r\n`);
  if (head.length) agent.write(head);
  // Either end going away ends the other: the agent kills a command whose host left.
  socket.on('error', () => agent.destroy());
  agent.on('error', () => socket.destroy());
  socket.on('close', () => agent.destroy());
  agent.on('close', () => socket.destroy());
  socket.pipe(agent);
  agent.pipe(socket);
}
