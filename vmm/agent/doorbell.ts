// Host side of the hypercall doorbell (docs/hypercall.md §6): one long-lived connection to
// the agent's doorbell port (53) that carries a 0x01 byte per ring. Owns that connection
// and its reconnects; must not know the hypercall device's state (the device decides when
// to ring: `dev.onDoorbellNeeded(() => bell.ring())`).
import type { Duplex } from 'node:stream';
import type { Connector } from './client';

export interface DoorbellOptions {
  /** Delay between attempts when the connection cannot be opened (ms). */
  retryMs?: number;
  /** Attempts per ring before giving up (the device rings again after the next FETCH). */
  maxAttempts?: number;
  onError?: (e: Error) => void;
}

export class AgentDoorbell {
  private conn: Duplex | null = null;
  private connecting = false;
  private pending = false;
  private attempts = 0;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  /** Rings written to the connection. */
  rings = 0;

  constructor(
    private readonly connector: Connector,
    private readonly opts: DoorbellOptions = {},
  ) {}

  /** Wakes the agent. A ring is never dropped silently: the device will not ring again
   * until the agent FETCHes, so a failed connect is retried. */
  ring(): void {
    if (this.closed) return;
    this.pending = true;
    this.attempts = 0;
    this.flush();
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.conn?.destroy();
    this.conn = null;
  }

  private flush(): void {
    if (!this.pending || this.closed) return;
    if (this.conn) {
      this.conn.write(Buffer.from([1]));
      this.pending = false;
      this.rings++;
      return;
    }
    if (this.connecting || this.timer) return;
    this.connecting = true;
    this.connector().then(
      (c) => {
        this.connecting = false;
        if (this.closed) return void c.destroy();
        this.conn = c;
        c.resume(); // the agent never writes here; drain whatever comes
        const drop = (): void => {
          if (this.conn === c) this.conn = null;
        };
        c.on('error', (e: Error) => {
          drop();
          this.opts.onError?.(e);
        });
        c.on('close', drop);
        this.flush();
      },
      (e: Error) => {
        this.connecting = false;
        this.opts.onError?.(e);
        if (++this.attempts >= (this.opts.maxAttempts ?? 50)) {
          this.pending = false;
          return;
        }
        this.timer = setTimeout(() => {
          this.timer = null;
          this.flush();
        }, this.opts.retryMs ?? 200);
      },
    );
  }
}
