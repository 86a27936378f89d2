// The guest address map and port map (vmm/layout.ts): no two things share an address, and the
// MMIO windows sit in the 32-bit hole, never in e820 RAM.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as L from '../../../vmm/layout';
import { MAX_VIRTIO_DEVICES } from '../../../vmm/acpi/index';

interface Range {
  what: string;
  start: number;
  end: number; // exclusive
}
const PAGE = 0x1000;

function overlaps(ranges: Range[]): string[] {
  const sorted = [...ranges].sort((a, b) => a.start - b.start);
  const out: string[] = [];
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1]!;
    const b = sorted[i]!;
    if (b.start < a.end) out.push(`${a.what} [0x${a.start.toString(16)}, 0x${a.end.toString(16)}) overlaps ${b.what} at 0x${b.start.toString(16)}`);
  }
  return out;
}

const lastVirtio = L.virtioMmioSlot(MAX_VIRTIO_DEVICES - 1);

test('guest physical map: boot structures, ACPI and kernel below 1 MiB do not overlap', () => {
  const low: Range[] = [
    { what: 'GDT', start: L.GDT_ADDR, end: L.IDT_ADDR },
    { what: 'IDT', start: L.IDT_ADDR, end: L.IDT_ADDR + 8 },
    { what: 'zero page', start: L.ZERO_PAGE_ADDR, end: L.ZERO_PAGE_ADDR + PAGE },
    { what: 'PML4', start: L.PML4_ADDR, end: L.PML4_ADDR + PAGE },
    { what: 'PDPT', start: L.PDPT_ADDR, end: L.PDPT_ADDR + PAGE },
    { what: 'PDs', start: L.PD_ADDR, end: L.PD_ADDR + 4 * PAGE },
    { what: 'command line', start: L.CMDLINE_ADDR, end: L.CMDLINE_ADDR + L.CMDLINE_MAX },
    { what: 'EBDA/BIOS', start: L.EBDA_START, end: L.ACPI_ADDR },
    { what: 'ACPI window', start: L.ACPI_ADDR, end: L.ACPI_END },
    { what: 'kernel', start: L.KERNEL_ADDR, end: L.KERNEL_ADDR + L.MiB },
  ];
  assert.equal(overlaps(low), []);
  assert.ok(L.BOOT_STACK_ADDR > L.ZERO_PAGE_ADDR + PAGE && L.BOOT_STACK_ADDR <= L.PML4_ADDR, 'the stack grows down below the PML4');
});

test('MMIO windows: inside the 32-bit hole, disjoint, with room for every virtio slot', () => {
  const hole: Range[] = [
    { what: 'hypercall shared memory', start: L.HYPERCALL_SHMEM_ADDR, end: L.HYPERCALL_SHMEM_ADDR + L.HYPERCALL_SHMEM_SIZE },
    { what: 'virtio-mmio', start: L.VIRTIO_MMIO_BASE, end: lastVirtio.base + lastVirtio.size },
    { what: 'IOAPIC', start: L.IOAPIC_ADDR, end: L.IOAPIC_ADDR + PAGE },
    { what: 'LAPIC', start: L.LAPIC_ADDR, end: L.LAPIC_ADDR + PAGE },
    { what: 'KVM identity map', start: L.KVM_IDENTITY_MAP_ADDR, end: L.KVM_IDENTITY_MAP_ADDR + PAGE },
    { what: 'KVM TSS', start: L.KVM_TSS_ADDR, end: L.KVM_TSS_ADDR + 3 * PAGE },
  ];
  assert.equal(overlaps(hole), []);
  for (const r of hole) assert.ok(r.start >= L.MMIO_HOLE_START && r.end <= L.FOUR_GIB, `${r.what} is in the MMIO hole`);
});

test('port map: no two devices decode the same port', () => {
  const ports: Range[] = [
    { what: 'i8042', start: L.I8042_DATA_PORT, end: L.I8042_COMMAND_PORT + 1 },
    { what: 'COM1', start: L.COM1_PORT, end: L.COM1_PORT + 8 },
    { what: 'pvpanic', start: L.PVPANIC_PORT, end: L.PVPANIC_PORT + 1 },
    { what: 'ACPI sleep', start: L.ACPI_SLEEP_CONTROL_PORT, end: L.ACPI_SLEEP_STATUS_PORT + 1 },
    { what: 'hypercall', start: L.HYPERCALL_PORT, end: L.HYPERCALL_PORT + L.HYPERCALL_PORT_LEN },
  ];
  assert.equal(overlaps(ports), []);
});

test.run();
