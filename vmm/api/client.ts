// A small client for tsvmm's control API over its Unix socket (used by `tsvmm bpf|sched|...`).
// Owns request/response plumbing only: no retries, one request per connection.

import { request } from 'node:http';
import type { Duplex } from 'node:stream';
import { TsvmmError } from '../../lib/errors';
import type { Connector } from '../agent/client';
import { AGENT_UPGRADE } from './wire';

export class ApiClientError extends TsvmmError {
  constructor(message: string, readonly status?: number) {
    super(message);
  }
}

export interface ApiReply {
  status: number;
  contentType: string;
  text: string;
}

export function apiCall(socketPath: string, method: string, path: string, body?: unknown, opts: { timeoutMs?: number; accept?: string } = {}): Promise<ApiReply> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request({
      socketPath, method, path,
      agent: false,
      headers: {
        Accept: opts.accept ?? 'application/json',
        ...(payload === undefined ? {} : { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload) }),
      },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, contentType: String(res.headers['content-type'] ?? ''), text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.setTimeout(opts.timeoutMs ?? 120_000, () => req.destroy(new ApiClientError(`${method} ${path}: no answer from ${socketPath} in time`)));
    req.on('error', (e: NodeJS.ErrnoException) => {
      if (e instanceof ApiClientError) return reject(e);
      const why = e.code === 'ENOENT' ? 'no such socket' : e.code === 'ECONNREFUSED' ? 'nobody is listening (stale socket?)' : e.message;
      reject(new ApiClientError(`cannot reach the API at ${socketPath}: ${why}`));
    });
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}

function unreachable(socketPath: string, e: NodeJS.ErrnoException): ApiClientError {
  const why = e.code === 'ENOENT' ? 'no such socket' : e.code === 'ECONNREFUSED' ? 'nobody is listening (stale socket?)' : e.message;
  return new ApiClientError(`cannot reach the API at ${socketPath}: ${why}`);
}

/** The fault message of an API error body, or the body itself. */
function faultOf(text: string): string {
  try {
    const j = JSON.parse(text) as { fault_message?: unknown };
    if (typeof j.fault_message === 'string') return j.fault_message;
  } catch {
    // not JSON: show it raw
  }
  return text.trim();
}

/**
 * Connections to the guest agent of the VM behind API socket `socketPath`: each one a POST
 * /agent upgraded to the agent protocol (docs/api.md), for an AgentClient.
 */
export function apiAgentConnector(socketPath: string): Connector {
  return () => new Promise<Duplex>((resolve, reject) => {
    const req = request({ socketPath, method: 'POST', path: '/agent', agent: false, headers: { Connection: 'Upgrade', Upgrade: AGENT_UPGRADE } });
    req.on('upgrade', (_res, socket, head) => {
      if (head.length) socket.unshift(head);
      resolve(socket);
    });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => reject(new ApiClientError(`POST /agent: ${res.statusCode}: ${faultOf(Buffer.concat(chunks).toString('utf8'))}`, res.statusCode)));
    });
    req.on('error', (e: NodeJS.ErrnoException) => reject(unreachable(socketPath, e)));
    req.end();
  });
}

/** A call that must succeed: 2xx → parsed JSON (undefined for 204), else ApiClientError(fault_message). */
export async function apiJson(socketPath: string, method: string, path: string, body?: unknown): Promise<unknown> {
  const r = await apiCall(socketPath, method, path, body);
  if (r.status >= 200 && r.status < 300) return r.text ? JSON.parse(r.text) : undefined;
  let msg = r.text.trim();
  try {
    const j = JSON.parse(r.text) as { fault_message?: unknown };
    if (typeof j.fault_message === 'string') msg = j.fault_message;
  } catch {
    // not JSON: show it raw
  }
  throw new ApiClientError(`${method} ${path}: ${r.status}: ${msg}`, r.status);
}

/**
 * A streaming GET (NDJSON): `onLine` gets each complete line as it arrives. Resolves when the
 * server ends the stream or `signal` aborts it; a non-200 answer rejects with its fault message.
 */
export function apiStream(socketPath: string, path: string, onLine: (line: string) => void, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method: 'GET', path, agent: false, headers: { Accept: 'application/x-ndjson' } }, (res) => {
      if (res.statusCode !== 200) {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let msg = text.trim();
          try {
            msg = (JSON.parse(text) as { fault_message?: string }).fault_message ?? msg;
          } catch {
            // not JSON: show it raw
          }
          reject(new ApiClientError(`GET ${path}: ${res.statusCode}: ${msg}`, res.statusCode));
        });
        return;
      }
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        buf += c;
        for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
          onLine(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
        }
      });
      res.on('end', () => resolve());
      res.on('error', (e) => (signal?.aborted ? resolve() : reject(e)));
    });
    signal?.addEventListener('abort', () => {
      req.destroy();
      resolve();
    }, { once: true });
    req.on('error', (e: NodeJS.ErrnoException) => {
      if (signal?.aborted) return resolve();
      const why = e.code === 'ENOENT' ? 'no such socket' : e.code === 'ECONNREFUSED' ? 'nobody is listening (stale socket?)' : e.message;
      reject(new ApiClientError(`cannot reach the API at ${socketPath}: ${why}`));
    });
    req.end();
  });
}
