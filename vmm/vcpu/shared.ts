// How a vCPU worker serves a device's shared registers (SharedRegister in devices/bus.ts)
// without a hop to main. Owns only the match rule and the atomic access; kept apart from
// worker.ts (which starts a vCPU on import) so tests run the very code the worker runs.

import { GATE, REFUSE, type BusClaim, type SharedRegister } from '../../devices/bus';
import { ierStore, iirRead, threAfterPush } from '../../devices/serial';
import { eventfdSignal } from '../../kvm/libc';
import { ringPush } from '../../devices/tx-ring';

/** The 4 bytes of a guest access as the signed 32-bit value an Int32 cell holds. */
const le32 = (d: Uint8Array): number => d[0]! | (d[1]! << 8) | (d[2]! << 16) | (d[3]! << 24);

/** The cell entry an access to `s` uses: its selector's value for a bank, else 0; -1 beyond the bank. */
function entry(s: SharedRegister): number {
  if (!s.select) return 0;
  const i = Atomics.load(s.select, 0) >>> 0;
  return i < s.cell.length ? i : -1;
}

/**
 * Serves an access from one of the claim's shared registers when it matches one exactly
 * (offset, width, direction); false: the access goes to the device. The guest is
 * hostile, but nothing here can throw: the cell is a valid Int32Array, and `data` has the
 * register's width once it matched. A `push` may wait while its ring is full (tx-ring.ts).
 */
export function serveShared(claim: BusClaim, addr: number, data: Uint8Array, isWrite: boolean): boolean {
  for (const s of claim.shared) {
    const reads = s.kind === 'load' || s.kind === 'uart-iir';
    if (addr - claim.base !== s.offset || data.length !== s.size || isWrite === reads) continue;
    if (s.kind === 'refuse') {
      const c = s.cell;
      if (!Atomics.load(c, REFUSE.ON) || le32(data) !== Atomics.load(c, REFUSE.COMMAND)) continue;
      Atomics.add(c, REFUSE.SEQ, 1);
      Atomics.store(c, REFUSE.STATUS, Atomics.load(c, REFUSE.ANSWER_STATUS));
      Atomics.store(c, REFUSE.RESULT, Atomics.load(c, REFUSE.ANSWER_RESULT));
      Atomics.add(c, REFUSE.COUNT, 1);
      return true;
    }
    if (s.kind === 'push') {
      if (!s.ring || !ringPush(s.cell, s.ring, data[0]!)) continue;
      if (s.thre && threAfterPush(s.thre.uart)) {
        try {
          eventfdSignal(s.thre.irqFd);
        } catch {
          // A closed irqfd (the VM is ending): nothing to interrupt.
        }
      }
      return true;
    }
    if (s.kind === 'uart-ier') {
      if (!ierStore(s.cell, data[0]!)) continue;
      return true;
    }
    if (s.kind === 'uart-iir') {
      data[0] = iirRead(s.cell);
      return true;
    }
    const i = entry(s);
    if (i < 0) continue;
    if (s.kind === 'store') {
      const g = s.gate;
      if (g && Atomics.compareExchange(g, i, GATE.OPEN, GATE.BUSY) !== GATE.OPEN) continue;
      Atomics.store(s.cell, i, s.size === 4 ? le32(data) : data[0]!);
      if (g) Atomics.store(g, i, GATE.OPEN);
      return true;
    }
    if (isWrite) {
      Atomics.and(s.cell, i, ~(le32(data) & ~(s.keep ?? 0)));
      return true;
    }
    const v = Atomics.load(s.cell, i);
    for (let i = 0; i < data.length; i++) data[i] = v >>> (8 * i);
    return true;
  }
  return false;
}
