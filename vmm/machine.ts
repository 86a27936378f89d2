// A tsvmm machine: creates the VM, its memory, boot state and devices from a MachineConfig,
// runs the vCPU threads, and turns the guest's way of ending (poweroff, reboot, panic, crash)
// into an exit status. Owns the order of setup and teardown; every resource it creates is
// released by close(), whatever state the machine reached.

import { closeSync, fstatSync, openSync, readFileSync, statSync } from 'node:fs';
import { Kvm, Vm, Vcpu } from '../kvm/kvm';
import { Bus } from '../devices/bus';
import { Serial16550 } from '../devices/serial';
import { FULL_WAIT_MS } from '../devices/tx-ring';
import { AcpiSleep, PowerEvent, PvPanic } from '../devices/power';
import { I8042 } from '../devices/i8042';
import { buildAcpiTables } from './acpi/index';
import { loadKernel, probeKernel, type LoadedKernel } from './boot/loader';
import { recordedRuns, recordRuns, unpackKernel, type UnpackedKernel } from './boot/unpack';
import { setupVcpu } from './boot/cpu';
import { ConfigError, MachineConfig, validateConfig, validateVcpus } from './config';
import { IrqfdLine } from './irq';
import {
  ACPI_ADDR, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT, COM1_IRQ, COM1_PORT, HYPERCALL_PORT, HYPERCALL_PORT_LEN, HYPERCALL_SHMEM_ADDR,
  HYPERCALL_SHMEM_SIZE, I8042_COMMAND_PORT, I8042_DATA_PORT, I8042_IRQ, IOAPIC_ADDR, KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR, LAPIC_ADDR, PVPANIC_PORT,
  VIRTIO_MMIO_SLOTS, virtioMmioSlot,
} from './layout';
import { GuestRam } from './memory';
import { VcpuExit, VcpuThreads, type VcpuWorkers } from './vcpu/threads';
import { MmioTransport } from '../devices/virtio/mmio';
import type { VirtioDevice } from '../devices/virtio/device';
import { VirtioVsock } from '../devices/virtio/vsock/index';
import { openDrive, type VirtioBlock } from '../devices/virtio/block/index';
import { VirtioRng } from '../devices/virtio/rng/index';
import { eventfd, eventfdDrain, close as closeFd, watchReadable, mmap, munmap, view, PROT_READ, MAP_PRIVATE } from '../kvm/libc';
import { Paravirt, newScheduler } from './paravirt';
import { RateLimitedLog, type RateLimitOptions } from './log';
import type { VcpuScheduler } from './scheduler/scheduler';
import { Actuators } from './actuators';
import { PrioPolicy } from './scheduler/prio';
import { HINT_PROGRAMS } from './hints/programs';
import { SCHED, schedGetattr, schedSetattr } from '../kvm/libc';
import { EXIT } from '../lib/errors';
import { Channel } from '../devices/virtio/vhost-user/channel';
import { VhostUserFrontend } from '../devices/virtio/vhost-user/frontend';
import { FS_QUEUES, VirtioFs } from '../devices/virtio/fs/device';
import { findVirtiofsd, Virtiofsd } from '../devices/virtio/fs/daemon';
import { sharesCmdline, type ShareConfig } from './shares';
import type { StartupClock } from './startup';
import { ConsoleTail } from './console/tail';
import { formatCrash, parseTaskStat, type MachineDiagnosis } from './diagnosis';
import { loadavg } from 'node:os';

/** How a VM ended; `code` is tsvmm's process exit status (docs/architecture.md). */
export interface ExitStatus {
  code: number;
  reason: 'poweroff' | 'reboot' | 'panic' | 'crash' | 'error' | 'signal' | 'timeout' | 'quit';
  detail: string;
}

export interface MachineIo {
  /** Guest serial output. */
  console: (bytes: Uint8Array) => void;
  log: (msg: string) => void;
  /** How the VM failed (a vCPU's crash report), which the user must hear even when `log` is quiet; default `log`. */
  error?: (msg: string) => void;
  /** Slow one-time steps the user should hear of even when `log` is quiet (unpacking a new kernel); default `log`. */
  progress?: (msg: string) => void;
  /** The VMM's start in phases (vmm/startup.ts): the machine ends its own; logged to `debug` at the first KVM_RUN. */
  startup?: StartupClock;
  debug?: (msg: string) => void;
  /** vCPU workers spawned ahead, config.vcpus of them (`tsvmm run`: before its configuration); the machine's from now on. */
  workers?: VcpuWorkers;
}

/**
 * How much nicer than the main thread the vCPU threads run. The main thread answers every
 * forwarded exit, the API, vsock and the console: when it and a vCPU thread want the same CPU,
 * it should win (CFS weights 1024 : 335, three times in four) — at equal weight a guest spinning
 * on every vCPU kept the main thread waiting for a CPU a third of the time and delayed GET / by
 * whole time slices (docs/benchmarks.md, "The API under a hostile guest"). A nice value weighs
 * only against the threads of the same scheduling group (the session's autogroup, Linux's
 * default, or a cgroup of its own), so other processes see the VM as before. Raising a nice
 * value needs no privilege; lowering it again (PUT /vcpus/{n}/sched) needs CAP_SYS_NICE or
 * RLIMIT_NICE.
 */
export const VCPU_NICE_ABOVE_MAIN = 5;

export class Machine {
  readonly config: MachineConfig;
  private kvm?: Kvm;
  private vm?: Vm;
  private ram?: GuestRam;
  private vcpus: Vcpu[] = [];
  private irqs: IrqfdLine[] = [];
  private readonly threads: VcpuThreads;
  readonly pio = new Bus();
  readonly mmio = new Bus();
  serial?: Serial16550;
  i8042?: I8042;
  vsock?: VirtioVsock;
  /** virtio-blk devices, in config order (the guest's vda, vdb, …). */
  readonly drives: VirtioBlock[] = [];
  rng?: VirtioRng;
  /** The hypercall device and vCPU scheduler (present when the machine has vsock: the doorbell rides on it). */
  paravirt?: Paravirt;
  scheduler?: VcpuScheduler;
  /** vCPU thread class, halt polling, pausing one vCPU (present once the VM exists). */
  actuators?: Actuators;
  /** The guest-RT -> vCPU-priority policy (vmm/scheduler/prio.ts). */
  prio?: PrioPolicy;
  readonly transports: { name: string; transport: MmioTransport }[] = [];
  /** The last lines of the guest console, kept whether or not io.console shows them (for diagnose()). */
  readonly consoleTail = new ConsoleTail();
  private readonly startedAt = performance.now();
  private serialIrq?: IrqfdLine;
  private readonly cleanups: (() => void | Promise<void>)[] = [];
  /** Log lines the guest can trigger at will, one limiter per source; flushed at close. */
  private readonly limiters: RateLimitedLog[] = [];
  private readonly deviceFaults: RateLimitedLog;
  private ended?: (s: ExitStatus) => void;
  readonly exited: Promise<ExitStatus>;
  private status?: ExitStatus;

  private constructor(config: MachineConfig, private readonly io: MachineIo) {
    this.config = config;
    this.exited = new Promise((r) => (this.ended = r));
    this.deviceFaults = this.guestLog('device errors');
    this.threads = new VcpuThreads(this.pio, this.mmio, (e) => this.onVcpuExit(e), (f) => this.deviceFaults.line(
      `device error on a guest ${f.kind} ${f.isWrite ? 'write' : 'read'} of ${f.size} bytes at 0x${f.addr.toString(16)} (answered as unclaimed): ${f.error.stack ?? f.error.message}`,
    ), io.workers);
  }

  private guestLog(what: string, opts?: RateLimitOptions): RateLimitedLog {
    const l = new RateLimitedLog(this.io.log, what, opts);
    this.limiters.push(l);
    return l;
  }

  /** Validates, creates and boots the machine; vCPUs are running when this resolves. */
  static async start(config: MachineConfig, io: MachineIo): Promise<Machine> {
    validateConfig(config);
    const m = new Machine(config, io);
    try {
      // First (unless io.workers were spawned even earlier): the workers' own start overlaps
      // everything below (vmm/vcpu/threads.ts).
      m.threads.spawn(config.vcpus);
      // Before the mapping: unpackKernel finds the image's hash by it when the file is unchanged.
      const kernelStat = statSync(config.kernel, { bigint: true, throwIfNoEntry: false });
      // Mapped, not read: with its vmlinux cached, only the bzImage's header pages are touched
      // (not its ~11 MiB), and neither image stays in a buffer after the boot.
      const kernel = mapFile(config.kernel, 'kernel');
      const initrd = config.initrd ? mapFile(config.initrd, 'initrd') : undefined;
      try {
        const format = probeKernel(config.kernel, kernel.bytes);
        // Default on: the guest skips its own decompression (vmm/boot/unpack.ts). Before any KVM object.
        const unpacked = format === 'bzImage' && config.unpack !== false ? unpackKernel(config.kernel, kernel.bytes, io.progress ?? io.log, kernelStat) : undefined;
        io.startup?.end('read images (unpack)');
        await m.build(kernel.bytes, initrd?.bytes, unpacked);
      } finally {
        kernel.unmap(); // the loader copied what it needed
        initrd?.unmap();
      }
    } catch (e) {
      await m.close();
      throw e;
    }
    return m;
  }

  private async build(kernel: Uint8Array, initrd: Uint8Array | undefined, unpacked: UnpackedKernel | undefined): Promise<void> {
    const c = this.config;
    const kvm = (this.kvm = new Kvm());
    validateVcpus(c.vcpus, kvm.maxVcpus());
    const vm = (this.vm = kvm.createVm());
    vm.setTssAddr(KVM_TSS_ADDR);
    vm.setIdentityMapAddr(KVM_IDENTITY_MAP_ADDR);
    vm.createIrqchip();
    vm.createPit2();
    const phase = (name: string) => this.io.startup?.end(name);
    phase('kvm');
    const shares = c.shares ?? [];
    // A vhost-user back-end maps guest RAM itself: only then is RAM made of memfds.
    const ram = (this.ram = new GuestRam(vm, c.memory, { shared: shares.length > 0 }));
    phase('memory');
    // Every decision is logged, but a guest drives them: a policy change on many vCPUs fits the burst.
    const schedulerLog = this.guestLog('scheduler', { burst: 300, perSecond: 10 });
    const scheduler = (this.scheduler = newScheduler(c.vcpus, c.pin, c.hostCpus, (m) => schedulerLog.line(m)));
    const actuatorLog = this.guestLog('actuators', { burst: 300, perSecond: 10 });
    const actuators = (this.actuators = new Actuators({
      vcpus: c.vcpus,
      tids: () => this.threads.tids,
      setattr: schedSetattr,
      getattr: schedGetattr,
      setHaltPoll: (ns) => vm.setHaltPoll(ns),
      defaultHaltPoll: moduleHaltPoll,
      pause: (v) => this.threads.pause(v),
      resume: (v) => this.threads.resume(v),
      isPaused: (v) => this.threads.started && this.threads.isPaused(v),
      log: (m) => actuatorLog.line(m),
    }));
    const prio = (this.prio = new PrioPolicy({
      vcpus: c.vcpus, mode: c.prio ?? 'none', max: c.prioMax,
      boost: (v, cls, why) => actuators.boost(v, cls, why), log: (m) => actuatorLog.line(m),
    }));

    this.addLegacyDevices(vm);
    if (c.vsock) {
      this.vsock = await VirtioVsock.create({ guestCid: c.vsock.cid, udsPath: c.vsock.udsPath });
      const dev = this.vsock;
      this.cleanups.push(() => dev.close());
      this.addVirtio(vm, 'virtio-vsock', dev);
    }
    // Slots in this order: the guest's virtio-blk driver names disks in probe order, which is
    // slot order, so the drives get vda, vdb, … as configured.
    for (const spec of c.drives ?? []) {
      const ioLog = this.guestLog(`virtio-blk ${spec.id}`);
      const dev = await openDrive(spec, ram.hostRegions, (m) => ioLog.line(m));
      this.cleanups.push(() => dev.close());
      this.drives.push(dev);
      this.addVirtio(vm, `virtio-blk-${spec.id}`, dev);
    }
    if (c.rng !== false) {
      const dev = (this.rng = new VirtioRng(c.rng?.rateLimiter));
      this.cleanups.push(() => dev.close());
      this.addVirtio(vm, 'virtio-rng', dev);
    }
    for (const [i, share] of shares.entries()) await this.addVirtioFs(vm, i, share);
    const slots = this.transports.map((_, i) => virtioMmioSlot(i));
    let extraCmdline = shares.length ? ` ${sharesCmdline(shares)}` : '';
    if (this.vsock) {
      const vsock = this.vsock;
      // Shared memory outside e820 RAM: the guest agent maps it through /dev/mem.
      const shm = ram.mapSlot(vm, HYPERCALL_SHMEM_ADDR, HYPERCALL_SHMEM_SIZE).bytes;
      const pvLog = this.guestLog('paravirt');
      const pv = (this.paravirt = new Paravirt({
        shm, host: { vcpus: c.vcpus, scheduler, prio, actuators, log: (m) => pvLog.line(m) }, programs: HINT_PROGRAMS,
        connect: (p) => vsock.connect(p), log: (m) => pvLog.line(m),
      }));
      this.cleanups.push(() => pv.close());
      this.pio.insert(HYPERCALL_PORT, HYPERCALL_PORT_LEN, 'hypercall', pv.device);
      extraCmdline += ` ${Paravirt.cmdline()}`;
    }
    const root = c.drives?.[0]?.root ? c.drives[0] : undefined;
    // Firecracker's is_root_device: the kernel (or tsvmm's initramfs) mounts /dev/vda as /.
    if (root) extraCmdline += ` root=/dev/vda ${root.readOnly ? 'ro' : 'rw'}`;
    const hypercall = this.paravirt
      ? { ioBase: HYPERCALL_PORT, ioLen: HYPERCALL_PORT_LEN, memBase: HYPERCALL_SHMEM_ADDR, memSize: HYPERCALL_SHMEM_SIZE }
      : undefined;
    phase('devices');

    const acpi = c.acpi
      ? buildAcpiTables({
        vcpus: c.vcpus, lapicAddr: LAPIC_ADDR, ioapicAddr: IOAPIC_ADDR,
        sleepPorts: { control: ACPI_SLEEP_CONTROL_PORT, status: ACPI_SLEEP_STATUS_PORT },
        serial: { port: COM1_PORT, irq: COM1_IRQ },
        i8042: { dataPort: I8042_DATA_PORT, commandPort: I8042_COMMAND_PORT, irq: I8042_IRQ },
        pvpanicPort: PVPANIC_PORT, virtioMmio: slots, hypercall,
      }, ACPI_ADDR)
      : undefined;
    if (acpi) ram.memory.write(ACPI_ADDR, acpi.image);
    phase('acpi');
    // Without ACPI, kernels built with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES find devices here.
    const cmdline = c.acpi
      ? c.cmdline + extraCmdline
      : [c.cmdline + extraCmdline, 'acpi=off', ...slots.map((s) => `virtio_mmio.device=${s.size / 1024}K@0x${s.base.toString(16)}:${s.gsi}`)].join(' ');
    const since = Date.now();
    // Before the mapping, as for the bzImage: the runs recorded for this very file, if any.
    const vmlinuxStat = unpacked && statSync(unpacked.path, { bigint: true });
    const vmlinuxRuns = vmlinuxStat && recordedRuns(unpacked.path, vmlinuxStat);
    const vmlinux = unpacked ? mapFile(unpacked.path, 'unpacked kernel') : undefined;
    let loaded: LoadedKernel;
    try {
      loaded = loadKernel(ram.memory, ram.ranges, {
        kernelPath: c.kernel, kernel, initrdPath: c.initrd, initrd, cmdline, vmlinux: vmlinux?.bytes, vmlinuxRuns,
        // Fresh mappings (GuestRam): only the ACPI tables below 1 MiB are written so far.
        // Copied, not mapped into RAM from the file: a mapped kernel page costs the guest a
        // page-cache fault on first touch and a copy-on-write fault when written, each a
        // nested-paging exit under nested virtualization, which gave back all the ~0.9 s the
        // mapping saved here (docs/benchmarks.md, "Mapped against copied").
        ramZeroed: true,
      }, acpi?.rsdpAddr);
    } finally {
      vmlinux?.unmap(); // the loader copied what it needed
    }
    if (unpacked && vmlinuxStat && loaded.runs) recordRuns(unpacked.path, vmlinuxStat, loaded.runs, since);
    phase('image load');
    this.io.log(`loaded ${loaded.format} ${c.kernel}${unpacked ? ` (vmlinux ${unpacked.path})` : ''}, entry 0x${loaded.entry.toString(16)}${loaded.initrd ? `, initrd at 0x${loaded.initrd.addr.toString(16)}` : ''}`);

    const supportedCpuid = kvm.supportedCpuid();
    for (let i = 0; i < c.vcpus; i++) {
      const vcpu = vm.createVcpu(i);
      this.vcpus.push(vcpu);
      setupVcpu(vcpu, { supportedCpuid, count: c.vcpus, entry: loaded.entry });
    }
    phase('vcpus');
    const tids = await this.threads.start(this.vcpus, kvm.vcpuMmapSize(), { pio: this.pio.claims(), mmio: this.mmio.claims() });
    phase('vcpu threads');
    if (this.io.startup) this.io.debug?.(this.io.startup.summary());
    scheduler.setVcpuThreads(tids);
    this.io.log(`started ${c.vcpus} vCPU thread(s), tids ${tids.join(' ')}${this.niceVcpuThreads(tids)}`);
  }

  /**
   * Puts the vCPU threads VCPU_NICE_ABOVE_MAIN nicer than this (the main) thread; says what it
   * did for the log line. A main thread that is not SCHED_OTHER/BATCH (run under chrt) is left
   * as the operator made it, and so are its vCPU threads; a failure costs only the preference.
   */
  private niceVcpuThreads(tids: readonly number[]): string {
    try {
      const main = schedGetattr(0);
      if (main.policy !== SCHED.NORMAL && main.policy !== SCHED.BATCH) return '';
      const nice = Math.min(19, main.nice + VCPU_NICE_ABOVE_MAIN);
      for (const tid of tids) schedSetattr(tid, { policy: SCHED.NORMAL, priority: 0, nice });
      return ` at nice ${nice} (main thread ${main.nice})`;
    } catch (e) {
      return ` (their nice value is unchanged: ${(e as Error).message})`;
    }
  }

  private addLegacyDevices(vm: Vm): void {
    const power = (e: PowerEvent) => this.onPower(e);
    const com1Irq = new IrqfdLine(vm, COM1_IRQ);
    this.irqs.push(com1Irq);
    this.serialIrq = com1Irq;
    this.serial = new Serial16550(com1Irq, (b) => {
      this.consoleTail.push(b);
      this.io.console(b);
    });
    this.pio.insert(COM1_PORT, 8, 'com1', this.serial);
    // What the vCPU threads transmit reaches io.console through this loop (devices/serial.ts).
    this.serial.start().catch((e: Error) => this.finish({ code: EXIT.ERROR, reason: 'error', detail: `serial output failed: ${e.message}` }));
    const kbdIrq = new IrqfdLine(vm, I8042_IRQ);
    this.irqs.push(kbdIrq);
    this.i8042 = new I8042(kbdIrq, power);
    this.pio.insert(I8042_DATA_PORT, I8042_COMMAND_PORT - I8042_DATA_PORT + 1, 'i8042', this.i8042);
    this.pio.insert(PVPANIC_PORT, 1, 'pvpanic', new PvPanic(power));
    this.pio.insert(ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT - ACPI_SLEEP_CONTROL_PORT + 1, 'acpi-sleep', new AcpiSleep(power));
  }

  /**
   * Puts a virtio device on the next virtio-mmio slot. Queue notifications are ioeventfds
   * (a guest write to QueueNotify never exits to userspace; main drains the eventfd from its
   * event loop, or the device's own thread does: VirtioDevice.kickFds), interrupts an irqfd:
   * the vCPU never waits for the device.
   */
  private addVirtio(vm: Vm, name: string, device: VirtioDevice): void {
    if (this.transports.length >= VIRTIO_MMIO_SLOTS) throw new ConfigError(`${name}: no virtio-mmio slot left (at most ${VIRTIO_MMIO_SLOTS} virtio devices: vsock, drives, rng, shares)`);
    const slot = virtioMmioSlot(this.transports.length);
    const irq = new IrqfdLine(vm, slot.gsi);
    this.irqs.push(irq);
    const transport = new MmioTransport(device, this.ram!.memory, irq);
    const errors = this.guestLog(name);
    transport.onError = (reason) => errors.line(`${name}: device needs reset: ${reason}`);
    this.mmio.insert(slot.base, slot.size, name, transport);
    for (let q = 0; q < device.queueMaxSizes.length; q++) {
      const n = transport.notifyAddress(q);
      const own = device.kickFds?.[q];
      if (own !== undefined) {
        // The device's own thread reads it (a drive's I/O thread): main never sees the kick.
        vm.registerIoeventfd(own, slot.base + n.offset, n.length, { datamatch: n.datamatch });
        continue;
      }
      const fd = eventfd();
      vm.registerIoeventfd(fd, slot.base + n.offset, n.length, { datamatch: n.datamatch });
      const watch = watchReadable(fd, () => {
        if (eventfdDrain(fd) > 0n) transport.queueNotify(q);
      });
      this.cleanups.push(() => {
        watch.close();
        closeFd(fd);
      });
    }
    this.transports.push({ name, transport });

  }

  /**
   * A virtio-fs device served by its own virtiofsd (devices/virtio/fs/). tsvmm keeps the
   * transport's registers; at DRIVER_OK the device hands the rings to the daemon with the
   * queue's ioeventfd as kick fd and the device's irqfd as call fd, so requests and their
   * completions go guest <-> KVM <-> virtiofsd without this process.
   */
  private async addVirtioFs(vm: Vm, index: number, share: ShareConfig): Promise<void> {
    const ram = this.ram!;
    if (this.transports.length >= VIRTIO_MMIO_SLOTS) throw new ConfigError(`virtio-fs ${share.guestDir}: no virtio-mmio slot left (at most ${VIRTIO_MMIO_SLOTS} virtio devices: vsock, drives, rng, shares)`);
    const label = `${share.hostDir}:${share.guestDir}${share.readOnly ? ',ro' : ''}`;
    const { daemon, fd } = await Virtiofsd.start({
      binary: this.config.virtiofsd ?? findVirtiofsd(), source: share.hostDir, readOnly: share.readOnly, label,
      onDeath: (why) => this.finish({ code: EXIT.ERROR, reason: 'error', detail: why }),
    });
    const channel = new Channel(fd, `virtiofsd (${label})`);
    // Teardown order (cleanups run in reverse): the channel closes before the daemon stops.
    this.cleanups.push(() => daemon.stop());
    this.cleanups.push(() => channel.close());
    const frontend = new VhostUserFrontend(channel, `virtiofsd (${label})`);
    await frontend.init();
    const slot = virtioMmioSlot(this.transports.length);
    const irq = new IrqfdLine(vm, slot.gsi);
    this.irqs.push(irq);
    const kickFds = Array.from({ length: FS_QUEUES }, () => eventfd());
    this.cleanups.push(() => {
      for (const k of kickFds.splice(0)) closeFd(k);
    });
    const name = `virtio-fs${index}`;
    const errors = this.guestLog(name);
    const device = new VirtioFs({
      tag: share.tag, frontend, memory: { regions: ram.shared, hostAddress: (gpa, len) => ram.hostAddress(gpa, len) }, callFd: irq.fd, kickFds,
      log: (m) => errors.line(m),
    });
    const transport = new MmioTransport(device, ram.memory, irq, { backendInterrupts: true });
    transport.onError = (reason) => errors.line(`${name}: device needs reset: ${reason}`);
    for (let q = 0; q < device.queueMaxSizes.length; q++) {
      const n = transport.notifyAddress(q);
      vm.registerIoeventfd(kickFds[q]!, slot.base + n.offset, n.length, { datamatch: n.datamatch });
    }
    this.mmio.insert(slot.base, slot.size, name, transport);
    this.transports.push({ name, transport });
    this.io.log(`${name}: ${label} as tag ${share.tag}, virtiofsd pid ${daemon.pid}`);
  }

  /**
   * Types Ctrl-Alt-Del on the guest's keyboard (the API's SendCtrlAltDel). False when the
   * keyboard's buffer is still full of earlier keys: the guest is not reading it.
   */
  sendCtrlAltDel(): boolean {
    return this.i8042?.sendCtrlAltDel() ?? false;
  }

  /** KVM exits by reason for each vCPU (index = vCPU). */
  vcpuExits(): Record<string, number>[] {
    return this.threads.exitCounts();
  }

  /** Accesses forwarded to the main thread so far, by device (bus range name), and by register. */
  forwardedExits(): { byDevice: Record<string, number>; byRegister: Record<string, number>; deferred: number[] } {
    const f = this.threads.forwarded;
    return { byDevice: { ...f.byDevice }, byRegister: { ...f.byRegister }, deferred: [...f.deferred] };
  }

  /**
   * The boot's exit summary for the debug log: accesses forwarded to main (by device, and the
   * registers that cost most), accesses vCPU threads served themselves, the serial ring's waits.
   */
  private exitSummary(): string {
    const exits = this.vcpuExits();
    const sum = (k: string) => exits.reduce((n, e) => n + (e[k] ?? 0), 0);
    const { byDevice, byRegister, deferred } = this.forwardedExits();
    const top = (r: Record<string, number>, n: number) => Object.entries(r).sort((a, b) => b[1] - a[1]).slice(0, n).map(([k, v]) => `${k} ${v}`).join(', ');
    const ring = this.serial ? `; serial ring: ${this.serial.tx.fullWaits} full waits, ${this.serial.tx.dropped} bytes dropped` : '';
    const waited = deferred.reduce((a, b) => a + b, 0);
    const share = waited ? ` (${waited} waited for their vCPU's share of main: ${deferred.join('/')} by vCPU)` : '';
    return `exits this boot: ${sum('forwarded')} forwarded to main (${top(byDevice, 20) || 'none'})${share}, ${sum('shared')} served in vCPU threads${ring}; most forwarded registers: ${top(byRegister, 12) || 'none'}`;
  }

  /** The kernel tid of each vCPU thread, by vCPU index. */
  get vcpuTids(): number[] {
    return this.threads.tids;
  }

  /**
   * What the machine is doing, for a guest that does not answer (vmm/diagnosis.ts): every
   * vCPU sampled over `sampleMs` and read while briefly parked, the virtio devices, the tail of
   * the console. Takes about `sampleMs` plus a moment per vCPU; the guest runs on afterwards.
   */
  async diagnose(sampleMs = 1000): Promise<MachineDiagnosis> {
    // The main thread's CPU over the same sample as the vCPUs' (this timer fires first).
    const main0 = mainThreadTicks();
    let mainThreadCpuMsInSample: number | undefined;
    const timer = setTimeout(() => {
      const main1 = mainThreadTicks();
      if (main0 !== undefined && main1 !== undefined) mainThreadCpuMsInSample = (main1 - main0) * 10;
    }, sampleMs);
    const vcpus = this.threads.started && !this.status ? await this.threads.inspect(sampleMs, undefined, this.ram?.memory) : [];
    clearTimeout(timer);
    return {
      uptimeMs: performance.now() - this.startedAt,
      sampleMs: vcpus.length ? sampleMs : 0,
      vcpus,
      devices: this.transports.map(({ name, transport: t }) => ({
        name, status: t.deviceStatus, interruptStatus: t.interruptStatus, notifications: t.counters.notifications, interrupts: t.counters.interrupts,
        queues: t.queues.map((q) => q.inspect() ?? null),
      })),
      serialInterrupts: this.serialIrq?.triggered ?? 0,
      serialUart: this.serial?.interruptState,
      serialRing: this.serial && { pending: this.serial.tx.pending, fullWaits: this.serial.tx.fullWaits, dropped: this.serial.tx.dropped },
      console: { lines: this.consoleTail.snapshot(), totalBytes: this.consoleTail.total },
      ending: this.status?.detail,
      host: { loadavg: loadavg(), mainThreadCpuMsInSample },
    };
  }

  private onPower(e: PowerEvent): void {
    if (e === 'poweroff') this.finish({ code: EXIT.POWEROFF, reason: 'poweroff', detail: 'guest powered off' });
    else if (e === 'reboot') this.finish({ code: EXIT.REBOOT, reason: 'reboot', detail: 'guest requested a reset' });
    else this.finish({ code: EXIT.PANIC, reason: 'panic', detail: 'guest kernel panicked (pvpanic)' });
  }

  private onVcpuExit(e: VcpuExit): void {
    const where = `vCPU ${e.vcpu}: ${e.detail}`;
    switch (e.reason) {
      case 'system-poweroff':
        return this.finish({ code: EXIT.POWEROFF, reason: 'poweroff', detail: where });
      case 'system-reset':
        return this.finish({ code: EXIT.REBOOT, reason: 'reboot', detail: where });
      case 'system-crash':
        return this.finish({ code: EXIT.PANIC, reason: 'panic', detail: where });
      default:
        // What the vCPU looked like, before the VM is torn down: otherwise a crash says no more
        // than its reason. Once per VM (a second vCPU may fault while the first is reported).
        if (!this.status) for (const line of [where, ...formatCrash(this.threads.crashState(e.vcpu))]) (this.io.error ?? this.io.log)(line);
        return this.finish({ code: EXIT.CRASH, reason: 'crash', detail: where });
    }
  }

  /** Why the VM ends, from the moment finish() is called (`exited` resolves only after teardown). */
  get ending(): ExitStatus | undefined {
    return this.status;
  }

  /** Ends the VM with `status` (the first caller wins); resolves `exited` after teardown. */
  finish(status: ExitStatus): void {
    if (this.status) return;
    this.status = status;
    void this.close().then(() => this.ended!(status));
  }

  private closing?: Promise<void>;
  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.threads.stop();
      this.serial?.stop(); // the last bytes the vCPUs transmitted, before `exited` resolves
      if (this.threads.started) this.io.debug?.(this.exitSummary());
      if (this.serial?.tx.dropped) this.io.log(`serial: ${this.serial.tx.dropped} transmitted bytes dropped (the console output stalled for ${FULL_WAIT_MS / 1000} s with its ring full)`);
      for (const c of this.cleanups.splice(0).reverse()) await c();
      for (const v of this.vcpus) v.close();
      for (const i of this.irqs) i.close();
      this.vm?.close();
      this.ram?.close();
      this.kvm?.close();
      for (const l of this.limiters) l.flush();
    })();
    return this.closing;
  }
}

/** CPU ticks (utime + stime, 10 ms each) of this process's main thread. */
function mainThreadTicks(): number | undefined {
  try {
    return parseTaskStat(readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8'))?.ticks;
  } catch {
    return undefined;
  }
}

/** The kvm module's halt_poll_ns: what a VM polls before KVM_CAP_HALT_POLL changes it. */
function moduleHaltPoll(): number | undefined {
  try {
    const n = Number(readFileSync('/sys/module/kvm/parameters/halt_poll_ns', 'utf8').trim());
    return Number.isSafeInteger(n) ? n : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A file mapped read-only until unmap(): the images are parsed and copied into guest RAM
 * straight from the page cache, and only the pages touched are read. `bytes` must not be
 * touched after unmap(). A file truncated while mapped would fault (SIGBUS) on the pages past
 * its new end: the mappings live only while the machine is built, not while it runs.
 */
function mapFile(path: string, what: string): { bytes: Uint8Array; unmap(): void } {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new ConfigError(`${what} ${path}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
  }
  try {
    const st = fstatSync(fd);
    if (st.isDirectory()) throw new ConfigError(`${what} ${path}: is a directory`);
    // mmap refuses a length of 0: an empty file is an empty image (the loader says so).
    const addr = st.size ? mmap(st.size, PROT_READ, MAP_PRIVATE, fd) : undefined;
    return {
      bytes: addr === undefined ? new Uint8Array(0) : new Uint8Array(view(addr, st.size)), unmap: () => {
        if (addr !== undefined) munmap(addr, st.size);
        closeSync(fd);
      },
    };
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}
