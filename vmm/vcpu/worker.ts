// A vCPU thread: runs KVM_RUN synchronously in a loop, forever on this one thread (a vCPU that
// hops threads is 10-400x slower, docs/architecture.md). Port and MMIO exits for addresses a main-thread
// device claims go through the mailbox, except that device's shared registers (e.g. virtio-mmio
// InterruptStatus/ACK), which are served here from shared memory; unclaimed addresses are
// answered here too (reads all ones). Exits that end the VM are reported to main, which decides
// what they mean. The thread is spawned before its vCPU exists (its Node start overlaps the
// VMM's setup) and gets the vCPU in one message.

import { constants } from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import { Vcpu } from '../../kvm/kvm';
import {
  ExitReason, KVM_EXIT_IO_OUT, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, KvmRun, KvmRunFailEntry,
  KvmRunInternal, KvmRunIo, KvmRunMmio, KvmRunSystemEvent, exitReasonName,
} from '../../kvm/layout';
import { gettid, installSeccompFilter, setThreadName } from '../../kvm/libc';
import { KVM } from '../../kvm/ioctl';
import { vcpuFilter } from './seccomp';
import { seccompMode } from '../../bpf/seccomp-worker';
import type { BusClaim } from '../../devices/bus';
import {
  KIND_MMIO, KIND_PIO, MB, STAT_FORWARDED, STAT_LAST_EXIT, STAT_LAST_REASON, STAT_SHARED, STAT_STATE, STATE_IDLE,
  VCPU_STATE, VcpuExitReason, WorkerInit, WorkerMessage, WorkerRun, mailboxData, postRequest, waitForAnswer,
} from './mailbox';
import { serveShared } from './shared';
import { RECENT_COUNT, RECENT_WRITE, noteAccess, noteExit } from './recent';

const { EINTR, EAGAIN } = constants.errno;

const init = workerData as WorkerInit;
const post = (m: WorkerMessage) => parentPort!.postMessage(m);
const mb = init.mailbox;
const mbData = mailboxData(mb);
const stats = init.stats;
const recent = init.recent;

setThreadName(`tsvmm-vcpu${init.id}`);
// Spawned before the VM exists (vmm/vcpu/threads.ts): say so, then wait for the vCPU.
post({ type: 'ready', tid: gettid() });
parentPort!.once('message', (job: WorkerRun) => runVcpu(job));

/** Runs the vCPU main created (`job`) on this thread until it ends or main stops it. */
function runVcpu(job: WorkerRun): void {
  const vcpu = new Vcpu(job.fd, init.id);
  const run = vcpu.mapRun(job.mmapSize).bytes;
  const rv = new DataView(run.buffer, run.byteOffset, run.byteLength);
  // Register exits are read straight from kvm_run with this DataView at the layout's offsets, not
  // decoded into objects (Struct.read): per exit that is ~10x cheaper (docs/architecture.md).
  const EXIT_REASON = KvmRun.offsets.exitReason;
  const IO = KvmRunIo.offsets;
  const MMIO = KvmRunMmio.offsets;

  const claimed = (ranges: readonly BusClaim[], addr: number, size: number) => {
    for (const c of ranges) if (addr >= c.base && addr + size <= c.base + c.len) return c;
    return undefined;
  };

  /** One access to a claimed range: from a shared register if it is one, else through main. */
  function claimedAccess(claim: BusClaim, kind: number, addr: number, data: Uint8Array, isWrite: boolean): void {
    if (serveShared(claim, addr, data, isWrite)) stats[STAT_SHARED]!++;
    else forward(kind, addr, data, isWrite);
  }

  /** Forwards one access to main and waits for its answer (reads fill `data`). */
  function forward(kind: number, addr: number, data: Uint8Array, isWrite: boolean): void {
    stats[STAT_FORWARDED]!++;
    postRequest(mb, init.doorbell, kind, addr, data, isWrite);
    stats[STAT_STATE] = VCPU_STATE.WAITING_FOR_MAIN;
    if (waitForAnswer(mb) && !isWrite) data.set(mbData.subarray(0, data.length));
    Atomics.store(mb, MB.STATE, STATE_IDLE);
    stats[STAT_STATE] = VCPU_STATE.HANDLING_EXIT;
  }

  function handleIo(): void {
    const dir = rv.getUint8(IO.direction);
    const size = rv.getUint8(IO.size);
    const port = rv.getUint16(IO.port, true);
    const count = rv.getUint32(IO.count, true);
    const off = Number(rv.getBigUint64(IO.dataOffset, true));
    const isWrite = dir === KVM_EXIT_IO_OUT;
    const claim = claimed(job.pio, port, size);
    for (let i = 0; i < count; i++) {
      const data = run.subarray(off + i * size, off + (i + 1) * size);
      if (claim) claimedAccess(claim, KIND_PIO, port, data, isWrite);
      else if (!isWrite) data.fill(0xff);
    }
    noteAccess(recent, port, size + (isWrite ? RECENT_WRITE : 0) + count * RECENT_COUNT, run.subarray(off, off + size));
  }

  function handleMmio(): void {
    const addr = Number(rv.getBigUint64(MMIO.physAddr, true));
    const len = Math.min(rv.getUint32(MMIO.len, true), 8);
    const isWrite = rv.getUint8(MMIO.isWrite) !== 0;
    const data = run.subarray(MMIO.data, MMIO.data + len);
    const claim = claimed(job.mmio, addr, len);
    if (claim) claimedAccess(claim, KIND_MMIO, addr, data, isWrite);
    else if (!isWrite) data.fill(0xff);
    noteAccess(recent, addr, len + (isWrite ? RECENT_WRITE : 0), data);
  }

  /**
   * Parks this vCPU while main says PAUSE (a per-vCPU actuator): the thread sleeps in
   * Atomics.wait, out of KVM_RUN, so the host scheduler sees it blocked and the guest sees a
   * vCPU that makes no progress. Main kicked us out of KVM_RUN with immediate_exit, which is
   * cleared here before running again (unless the VM is stopping, which needs it set).
   */
  function parkWhilePaused(): void {
    if (!Atomics.load(mb, MB.PAUSE)) return;
    stats[STAT_STATE] = VCPU_STATE.PARKED;
    Atomics.store(mb, MB.PAUSED, 1);
    Atomics.notify(mb, MB.PAUSED);
    // No timeout: a parked thread must not wake at all (a periodic wake-up costs CPU time the
    // pause promises not to spend). stop() clears PAUSE before it notifies, so a notify that
    // lands between the check and the wait still finds PAUSE changed and cannot be lost.
    while (Atomics.load(mb, MB.PAUSE) && !Atomics.load(mb, MB.STOP)) Atomics.wait(mb, MB.PAUSE, 1);
    if (!Atomics.load(mb, MB.STOP)) run[KvmRun.offsets.immediateExit] = 0;
    Atomics.store(mb, MB.PAUSED, 0);
    Atomics.notify(mb, MB.PAUSED);
  }

  function loop(): { reason: VcpuExitReason; detail: string } | undefined {
    for (;;) {
      parkWhilePaused();
      if (Atomics.load(mb, MB.STOP)) return undefined;
      stats[STAT_STATE] = VCPU_STATE.IN_KVM_RUN;
      const r = vcpu.run();
      stats[STAT_STATE] = VCPU_STATE.HANDLING_EXIT;
      if (r < 0) {
        if (r === -EINTR || r === -EAGAIN) continue;
        return { reason: 'internal-error', detail: `KVM_RUN failed: errno ${-r}` };
      }
      const reason = rv.getUint32(EXIT_REASON, true);
      stats[Math.min(reason, STAT_LAST_REASON)]!++;
      stats[STAT_LAST_EXIT] = reason;
      noteExit(recent, reason);
      switch (reason) {
        case ExitReason.IO:
          handleIo();
          break;
        case ExitReason.MMIO:
          handleMmio();
          break;
        case ExitReason.INTR:
          break;
        case ExitReason.HLT:
          return { reason: 'hlt', detail: 'vCPU halted with interrupts off' };
        case ExitReason.SHUTDOWN:
          return { reason: 'triple-fault', detail: 'KVM_EXIT_SHUTDOWN (triple fault)' };
        case ExitReason.SYSTEM_EVENT: {
          const { type } = KvmRunSystemEvent.read(rv);
          if (type === KVM_SYSTEM_EVENT_SHUTDOWN) return { reason: 'system-poweroff', detail: 'system event: shutdown' };
          if (type === KVM_SYSTEM_EVENT_RESET) return { reason: 'system-reset', detail: 'system event: reset' };
          if (type === KVM_SYSTEM_EVENT_CRASH) return { reason: 'system-crash', detail: 'system event: crash' };
          return { reason: 'unhandled', detail: `system event ${type}` };
        }
        case ExitReason.FAIL_ENTRY:
          return { reason: 'fail-entry', detail: `hardware entry failure 0x${KvmRunFailEntry.read(rv).hardwareEntryFailureReason.toString(16)}` };
        case ExitReason.INTERNAL_ERROR:
          return { reason: 'internal-error', detail: `KVM internal error, suberror ${KvmRunInternal.read(rv).suberror}` };
        default:
          return { reason: 'unhandled', detail: `unhandled exit ${exitReasonName(reason)}` };
      }
    }
  }

  // Setup is over: from here the thread only runs its vCPU (vmm/vcpu/seccomp.ts).
  const seccomp = seccompMode();
  if (seccomp !== 'off') installSeccompFilter(vcpuFilter(job.fd, KVM.RUN, seccomp));

  const end = loop();
  stats[STAT_STATE] = VCPU_STATE.ENDED;
  if (end) post({ type: 'exit', ...end });
  post({ type: 'stopped' });
}
