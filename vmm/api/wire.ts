// What the control API's HTTP thread (worker.ts) and the main thread (http.ts) say to each
// other: the thread's start data, a parsed request going to main, the answer coming back, a
// streamed answer's chunks and credit, and an upgraded agent connection handed over as a file
// descriptor; and the snapshot of the describe answers the thread gives itself (GET /, GET
// /machine-config, ...: http.ts says when main publishes one and why the thread is never behind
// main). Types, constants and the one JSON answer's form: the thread's bundle must not pull in
// the handlers.

import { STATUS_CODES } from 'node:http';
import type { MessagePort } from 'node:worker_threads';

/** The Upgrade protocol name of POST /agent. */
export const AGENT_UPGRADE = 'tsvmm-agent';

/** Request body size limits: `paths` by exact path, `default` for every other. */
export interface BodyLimits {
  default: number;
  paths: Record<string, number>;
}

/** The body size limit of a request to `path`. */
export function bodyLimitOf(limits: BodyLimits, path: string): number {
  return Object.hasOwn(limits.paths, path) ? limits.paths[path]! : limits.default;
}

/** workerData of the API thread. */
export interface ApiThreadInit {
  path: string;
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  maxConnections: number;
  bodyLimits: BodyLimits;
  /** Whether POST /agent may upgrade at all (the server was given an agent). */
  agent: boolean;
  /** The owner's uid: the only peer the agent route serves. */
  uid: number | undefined;
  /**
   * Cell 0 (STAT_CONNECTIONS): the thread's open connections now (it writes, main reads).
   * Cell 1 (STAT_SNAPSHOT): the version of the last snapshot main published (main writes after
   * posting it on `snapshotPort`, the thread reads before it answers from a snapshot).
   */
  stats: Int32Array;
  /** The describe answers as they were when the thread was started (version 0). */
  snapshot: Snapshot;
  /** Where main posts each later Snapshot, in version order. */
  snapshotPort: MessagePort;
}

export const STAT_CONNECTIONS = 0;
export const STAT_SNAPSHOT = 1;
/** Cells of ApiThreadInit.stats. */
export const STAT_CELLS = 2;

/** An answer as it goes on the wire: status, headers, body (absent: none). */
export interface WireAnswer {
  status: number;
  headers: Record<string, string | number>;
  body?: string;
}

/** An answer carrying a JSON document (200 unless told): the one serializer of main's and the thread's JSON answers, faults included. */
export function jsonAnswer(json: unknown, status = 200, headers: Record<string, string> = {}): WireAnswer {
  return { status, headers: { 'Content-Type': 'application/json', ...headers }, body: JSON.stringify(json) + '\n' };
}

/** A Firecracker-style error answer: `{"fault_message": message}`. */
export function faultAnswer(status: number, message: string, extra: Record<string, string> = {}): WireAnswer {
  return jsonAnswer({ fault_message: message }, status, extra);
}

/** Main's describe answers at one moment: GET of each path (exact, any query) → its answer. */
export interface Snapshot {
  version: number;
  answers: Record<string, WireAnswer>;
}

/** A request the thread has read whole and checked: the handler's business now. */
export interface WireRequest {
  type: 'request';
  id: number;
  method: string;
  path: string;
  /** The query string without its '?' (URLSearchParams input). */
  search: string;
  /** The parsed JSON body; undefined without one. */
  body: unknown;
  accept: string;
}

export type ThreadMessage =
  /** Listening at `path`, bound as this device and inode (main removes it at exit while it is still that). */
  | { type: 'listening'; dev: number; ino: number }
  /** The socket could not be bound; the thread ends. */
  | { type: 'listen-failed'; message: string }
  | WireRequest
  /** A POST /agent from the owner: `fd` is a duplicate of the connection, `head` the bytes read past the request. */
  | { type: 'agent'; fd: number; head: Uint8Array }
  /** A streamed answer's bytes up to here left the thread (credit back to the writer). */
  | { type: 'ack'; id: number; bytes: number }
  /** The streamed answer's connection closed. */
  | { type: 'stream-closed'; id: number }
  | { type: 'log'; message: string }
  /** Closed: no connection is left; the thread ends after this. */
  | { type: 'closed' };

export type MainMessage =
  /** The answer to request `id`: status, headers, body (absent: none). */
  | { type: 'response'; id: number; status: number; headers: Record<string, string | number>; body?: string }
  /** Request `id` is answered by a stream: the headers go out now, the chunks as they come. */
  | { type: 'stream'; id: number; contentType: string }
  | { type: 'chunk'; id: number; data: string }
  /** Stop listening, drop every connection, then say `closed`. */
  | { type: 'close' };

/** Most bytes of a streamed answer in flight between main and the thread before main's writer waits for a drain. */
export const STREAM_CREDIT = 64 * 1024;

/** An HTTP/1.1 error answer written raw to a socket the HTTP layer has handed over. */
export function rawFaultText(status: number, message: string): string {
  const body = faultAnswer(status, message).body!;
  return `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}
