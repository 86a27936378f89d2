// Test rig for the agent's eBPF side on the host, with no VM: the real HypercallDevice
// (devices/hypercall) over a shared-memory file that both this process (koffi mmap) and
// the agent map, its registers served on a Unix socket (the agent's --hc-sim), and the
// doorbell as a Unix socket the agent listens on. Used by test/integration/ebpf.test.ts.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HypercallDevice } from '../../../devices/hypercall';
import { HYPERCALL_SHMEM_ADDR as HC_SHM_BASE, HYPERCALL_SHMEM_SIZE as HC_SHM_SIZE } from '../../../vmm/layout';
import { unixConnector } from '../../../vmm/agent/connect';
import { AgentDoorbell } from '../../../vmm/agent/doorbell';
import { MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap, view } from '../../../kvm/libc';
import { buildAgent } from './harness';

export interface Rig {
  dir: string;
  dev: HypercallDevice;
  proc: ChildProcess;
  /** Register accesses the agent made, by kind. */
  regs: { reads: number; writes: number };
  bell: AgentDoorbell;
  log: () => string;
  stop: () => Promise<void>;
}

export async function startRig(opts: { allowFile?: string; cmdline?: string; ratePerSecond?: number } = {}): Promise<Rig> {
  const bin = buildAgent();
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-hc-'));
  const shmPath = join(dir, 'shm');
  const fd = openSync(shmPath, 'w+');
  ftruncateSync(fd, HC_SHM_SIZE);
  const ptr = mmap(HC_SHM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  closeSync(fd);
  const shm = new Uint8Array(view(ptr, HC_SHM_SIZE));
  const dev = new HypercallDevice({ shm, shmBase: HC_SHM_BASE, ratePerSecond: opts.ratePerSecond });

  // Registers: {u8 op (1 read, 2 write), u8 size, u16 offset, u32 value} -> u32.
  const regs = { reads: 0, writes: 0 };
  const regPath = join(dir, 'reg.sock');
  const regConns = new Set<Socket>();
  const regServer: Server = createServer((s) => {
    regConns.add(s);
    s.on('close', () => regConns.delete(s));
    let buf = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 8) {
        const op = buf[0];
        const off = buf.readUInt16LE(2);
        const data = new Uint8Array(buf.subarray(4, 8));
        buf = buf.subarray(8);
        if (op === 1) {
          regs.reads++;
          dev.read(off, data);
          s.write(Buffer.from(data));
        } else {
          regs.writes++;
          dev.write(off, data);
          s.write(Buffer.alloc(4));
        }
      }
    });
    s.on('error', () => {});
  });
  await new Promise<void>((r) => regServer.listen(regPath, r));

  const bellPath = join(dir, 'bell.sock');
  const bell = new AgentDoorbell(unixConnector(bellPath));
  dev.onDoorbellNeeded(() => bell.ring());

  const cmdlinePath = join(dir, 'cmdline');
  writeFileSync(cmdlinePath, opts.cmdline ?? 'console=ttyS0 quiet\n');
  const allowPath = opts.allowFile ?? join(dir, 'no-allow-list');
  const proc = spawn(bin, ['--unix', join(dir, 'exec.sock'), '--hc-sim', `${regPath},${shmPath},${bellPath}`, '--allow-file', allowPath, '--cmdline', cmdlinePath], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  proc.stderr!.on('data', (d: Buffer) => (log += d.toString()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`agent never said HELLO: ${log}`)), 10_000);
    dev.onAgentHello(() => {
      clearTimeout(timer);
      resolve();
    });
    proc.once('exit', (code) => reject(new Error(`agent exited with ${code}: ${log}`)));
  });

  const stop = async (): Promise<void> => {
    if (proc.exitCode === null) {
      const gone = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      await gone;
    }
    bell.close();
    // The eBPF side dies with the agent (PDEATHSIG), a moment later: until its register
    // connection closes it may still make the device touch the shared memory.
    const end = Date.now() + 5000;
    while (regConns.size > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    for (const c of regConns) c.destroy();
    dev.close();
    regServer.close();
    munmap(ptr, HC_SHM_SIZE);
    rmSync(dir, { recursive: true, force: true });
  };
  return { dir, dev, proc, regs, bell, log: () => log, stop };
}
