// Test helpers for the ACPI tests: follow the pointers of a built image (RSDP → XSDT →
// FADT → DSDT, MADT) and run the ACPICA tools (iasl, acpiexec) on tables in a temp dir.

import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AcpiConfig } from '../../../vmm/acpi/index';

export const BASE = 0xe0000;

export const sumOf = (b: Uint8Array): number => b.reduce((s, x) => (s + x) & 0xff, 0);
export const ascii = (b: Uint8Array, off: number, len: number): string => String.fromCharCode(...b.subarray(off, off + len));

export interface Tables {
  rsdp: Uint8Array;
  xsdt: Uint8Array;
  fadt: Uint8Array;
  madt: Uint8Array;
  dsdt: Uint8Array;
  /** Guest physical address of each table, by signature. */
  addr: Record<string, number>;
}

/** Splits an image by following the guest-physical pointers, the way a kernel would. */
export function splitImage(image: Uint8Array, base: number, rsdpAddr: number): Tables {
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const at = (addr: number): Uint8Array => {
    const off = addr - base;
    if (off < 0 || off + 8 > image.length) throw new Error(`table pointer 0x${addr.toString(16)} outside the image`);
    return image.subarray(off, off + dv.getUint32(off + 4, true));
  };
  const rsdp = image.subarray(rsdpAddr - base, rsdpAddr - base + 36);
  const xsdtAddr = Number(new DataView(rsdp.buffer, rsdp.byteOffset).getBigUint64(24, true));
  const xsdt = at(xsdtAddr);
  const addr: Record<string, number> = { 'RSD PTR ': rsdpAddr, XSDT: xsdtAddr };
  const found: Record<string, Uint8Array> = {};
  const xdv = new DataView(xsdt.buffer, xsdt.byteOffset, xsdt.byteLength);
  for (let o = 36; o < xsdt.length; o += 8) {
    const a = Number(xdv.getBigUint64(o, true));
    const t = at(a);
    found[ascii(t, 0, 4)] = t;
    addr[ascii(t, 0, 4)] = a;
  }
  const fadt = found['FACP'];
  const madt = found['APIC'];
  if (!fadt || !madt) throw new Error(`XSDT lacks FACP or APIC: ${Object.keys(found).join(',')}`);
  const dsdtAddr = Number(new DataView(fadt.buffer, fadt.byteOffset).getBigUint64(140, true));
  addr['DSDT'] = dsdtAddr;
  return { rsdp, xsdt, fadt, madt, dsdt: at(dsdtAddr), addr };
}

/** What every config carries: APIC windows and sleep ports (tsvmm's, vmm/layout.ts). */
export const platform = { lapicAddr: 0xfee0_0000, ioapicAddr: 0xfec0_0000, sleepPorts: { control: 0x600, status: 0x601 } } as const;

export function tsvmmConfig(vcpus: number, virtio = 3): AcpiConfig {
  return {
    ...platform,
    vcpus,
    serial: { port: 0x3f8, irq: 4 },
    i8042: { dataPort: 0x60, commandPort: 0x64, irq: 1 },
    pvpanicPort: 0x505,
    virtioMmio: Array.from({ length: virtio }, (_, i) => ({ base: 0xd000_0000 + i * 0x1000, size: 0x1000, gsi: 5 + i })),
    hypercall: { ioBase: 0x700, ioLen: 0x40, memBase: 0xc000_0000, memSize: 0x10_0000 },
  };
}

export interface ToolRun {
  status: number | null;
  output: string;
}

function run(cmd: string, args: string[], cwd: string): ToolRun {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 60_000 });
  if (r.error) throw new Error(`${cmd} did not run (is Debian's acpica-tools installed?): ${r.error.message}`);
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

/** Runs `fn` in a fresh temp dir holding `files`, then removes the dir. */
export function inTempDir<T>(files: Record<string, Uint8Array | string>, fn: (dir: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-acpi-'));
  try {
    for (const [name, data] of Object.entries(files)) writeFileSync(join(dir, name), data);
    return fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export interface Disassembly {
  /** iasl's console output. */
  log: string;
  /** The .dsl it wrote. */
  dsl: string;
}

/**
 * `iasl -d` on one table. Throws if iasl fails or reports any error, warning or bad
 * checksum, so a passing call means ACPICA's table parser accepted the bytes.
 */
export function disassemble(table: Uint8Array): Disassembly {
  return inTempDir({ 't.dat': table }, (dir) => {
    const r = run('iasl', ['-d', 't.dat'], dir);
    let dsl = '';
    try {
      dsl = readFileSync(join(dir, 't.dsl'), 'utf8');
    } catch {
      /* reported below */
    }
    const problems = [
      ...`${r.output}`.split('\n').filter((l) => /error|warning|incorrect|invalid|unknown/i.test(l)),
      ...dsl.split('\n').filter((l) => /incorrect checksum|\*\*\*\*|unknown|error/i.test(l)),
    ];
    if (r.status !== 0 || dsl === '' || problems.length > 0) {
      throw new Error(`iasl -d rejected the table (status ${r.status}):\n${problems.join('\n')}\n${r.output}`);
    }
    return { log: r.output, dsl };
  });
}

/** Compiles an iasl data-table source (e.g. an RSDP description); returns the binary. */
export function compileDataTable(source: string): Uint8Array {
  return inTempDir({ 't.asl': source }, (dir) => {
    const r = run('iasl', ['t.asl'], dir);
    if (r.status !== 0 || !/0 Errors, 0 Warnings/.test(r.output)) throw new Error(`iasl could not compile:\n${r.output}`);
    return new Uint8Array(readFileSync(join(dir, 't.aml')));
  });
}

/** acpiexec batch commands over the given tables (FADT, MADT, DSDT…); returns its output. */
export function acpiexec(commands: string[], tables: Record<string, Uint8Array>): string {
  return inTempDir(tables, (dir) => {
    const r = run('acpiexec', ['-b', commands.join(';'), ...Object.keys(tables)], dir);
    if (r.status !== 0) throw new Error(`acpiexec failed (status ${r.status}):\n${r.output}`);
    return r.output;
  });
}

/** Every hexadecimal field value iasl printed for `field` (e.g. "Local Apic ID"). */
export function fieldValues(dsl: string, field: string): number[] {
  const re = new RegExp(`\\]\\s+${field.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} : ([0-9A-F]+)`, 'g');
  return [...dsl.matchAll(re)].map((m) => parseInt(m[1]!, 16));
}
