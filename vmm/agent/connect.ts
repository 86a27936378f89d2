// Connectors for AgentClient: a plain Unix socket (the agent run on the host with
// --unix, in tests) and the hybrid-vsock handshake of the VMM's vsock device
// (`CONNECT <port>\n` -> `OK <host_port>\n`, as Firecracker's). Owns only connection
// set-up; what flows afterwards is ./protocol's business.
import { connect as netConnect, type Socket } from 'node:net';
import type { Connector } from './client';

export const AGENT_VSOCK_PORT = 52;
const MAX_HANDSHAKE_LINE = 64;

function openUnix(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = netConnect(path);
    s.once('connect', () => {
      s.off('error', reject);
      resolve(s);
    });
    s.once('error', reject);
  });
}

export function unixConnector(path: string): Connector {
  return () => openUnix(path);
}

/** Connects through a hybrid-vsock Unix socket to guest port `port`. Bytes that follow
 * the OK line are pushed back into the stream for the protocol to read. */
export function hybridVsockConnector(udsPath: string, port = AGENT_VSOCK_PORT, timeoutMs = 10_000): Connector {
  return async () => {
    const s = await openUnix(udsPath);
    return await new Promise<Socket>((resolve, reject) => {
      let line = Buffer.alloc(0);
      const timer = setTimeout(() => finish(new Error(`vsock CONNECT ${port}: no answer in ${timeoutMs} ms`)), timeoutMs);
      const finish = (err: Error | null, rest?: Buffer): void => {
        clearTimeout(timer);
        s.off('data', onData);
        s.off('error', onError);
        s.off('end', onEnd);
        if (err) {
          s.destroy();
          reject(err);
          return;
        }
        s.pause();
        if (rest && rest.length) s.unshift(rest);
        resolve(s);
      };
      const onData = (chunk: Buffer): void => {
        line = Buffer.concat([line, chunk]);
        const nl = line.indexOf(0x0a);
        if (nl < 0) {
          if (line.length > MAX_HANDSHAKE_LINE) finish(new Error(`vsock CONNECT ${port}: handshake line too long`));
          return;
        }
        const text = line.subarray(0, nl).toString('latin1');
        if (/^OK \d+$/.test(text)) finish(null, line.subarray(nl + 1));
        else finish(new Error(`vsock CONNECT ${port}: refused (${JSON.stringify(text)})`));
      };
      const onError = (e: Error): void => finish(e);
      const onEnd = (): void => finish(new Error(`vsock CONNECT ${port}: connection closed (no listener on that guest port?)`));
      s.on('data', onData);
      s.on('error', onError);
      s.on('end', onEnd);
      s.write(`CONNECT ${port}\n`);
    });
  };
}
