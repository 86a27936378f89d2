// The control API's HTTP/1.1 server over a Unix socket (node:http): the socket file (mode 0600,
// a stale one replaced, removed at close and at process exit), JSON bodies with a size limit,
// Firecracker-style errors ({"fault_message": …}), and limits against slow or many clients.
// It owns framing only; what a path means is the handler's business (resources.ts).

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import { ApiError, bodyLimit, type ApiRequest, type ApiResponse } from './resources';
import { ValidationError } from './schema';

export class ApiSocketError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ApiSocketError';
  }
}

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
}

/** Errors whose message is a fine answer to a bad request (bad input, refused by a check). */
const BAD_INPUT = new Set(['ValidationError', 'PackageError', 'ElfError', 'TopologyError', 'CpuListError', 'SchedulerError', 'PolicyError', 'HypercallError', 'ConfigError', 'AffinityError']);

export class ApiServer {
  private readonly sockets = new Set<import('node:net').Socket>();
  private readonly onExit = () => this.unlink();
  private closed = false;

  private constructor(private readonly server: Server, readonly path: string) {
    server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    process.on('exit', this.onExit);
  }

  static async listen(opts: ApiServerOptions): Promise<ApiServer> {
    await removeStaleSocket(opts.path);
    const headersTimeout = opts.headersTimeoutMs ?? 10_000;
    const server = createServer({
      headersTimeout,
      requestTimeout: Math.max(opts.requestTimeoutMs ?? 30_000, headersTimeout),
      // How often node looks for connections past those timeouts.
      connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(headersTimeout / 4))),
      keepAliveTimeout: 5_000,
    }, (req, res) => void serve(req, res, opts));
    server.maxConnections = opts.maxConnections ?? 64;
    server.maxHeadersCount = 64;
    // Created with mode 0600 from the start: the umask covers the window before chmod.
    const oldMask = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(opts.path, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } catch (e) {
      throw new ApiSocketError(`--api-sock ${opts.path}: ${(e as Error).message}`);
    } finally {
      process.umask(oldMask);
    }
    chmodSync(opts.path, 0o600);
    server.on('error', (e) => opts.log?.(`api: server error: ${e.message}`));
    return new ApiServer(server, opts.path);
  }

  /** Stops listening, drops open connections and removes the socket file. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const done = new Promise<void>((r) => this.server.close(() => r()));
    for (const s of this.sockets) s.destroy();
    await done;
    this.unlink();
    process.off('exit', this.onExit);
  }

  private unlink(): void {
    try {
      unlinkSync(this.path);
    } catch {
      // already gone
    }
  }
}

/**
 * A socket path left by a dead tsvmm is replaced; one with a live listener, or a path that is
 * not a socket, is an error (never delete what is not ours to delete).
 */
async function removeStaleSocket(path: string): Promise<void> {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new ApiSocketError(`--api-sock ${path}: exists and is not a socket`);
  const live = await new Promise<boolean>((resolve) => {
    const c = connect(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (live) throw new ApiSocketError(`--api-sock ${path}: another process is serving on this socket`);
  unlinkSync(path);
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

async function serve(req: IncomingMessage, res: ServerResponse, opts: ApiServerOptions): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://localhost');
  const method = req.method ?? 'GET';
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
    } else if (method === 'PUT') {
      return fault(res, 400, `PUT ${url.pathname}: the request needs a JSON body`);
    }
    const r = await opts.handle({ method, path: url.pathname, query: url.searchParams, body, accept: String(req.headers.accept ?? '') });
    if (r.status === 204) return send(res, 204);
    if ('text' in r) {
      res.writeHead(200, { 'Content-Type': r.contentType, 'Content-Length': Buffer.byteLength(r.text) });
      res.end(r.text);
      return;
    }
    send(res, 200, r.json);
  } catch (e) {
    const err = e as Error;
    if (e instanceof ApiError) return fault(res, e.status, e.message, e.allow ? { Allow: e.allow } : {});
    if (e instanceof ValidationError || BAD_INPUT.has(err.name)) return fault(res, 400, err.message);
    opts.log?.(`api: ${method} ${url.pathname}: internal error: ${err.stack ?? err.message}`);
    fault(res, 500, `internal error: ${err.message}`);
  }
}
