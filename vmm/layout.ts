// The guest physical address map and port map of a tsvmm machine (docs/architecture.md is
// the table; this is the code). Everything that places something in the guest imports it
// from here, so two things can never be put at one address by accident; the ACPI tables are
// handed these values (vmm/machine.ts) and invent none. What a device decodes inside its
// window (register offsets, the size of its register block) is the device's own fact.

import { HC_IO_LEN } from '../devices/hypercall/registers';

export const MiB = 0x10_0000;
export const GiB = 0x4000_0000;

export const GDT_ADDR = 0x500;
export const IDT_ADDR = 0x520;
export const ZERO_PAGE_ADDR = 0x7000;
export const BOOT_STACK_ADDR = 0x8ff0;
export const PML4_ADDR = 0x9000;
export const PDPT_ADDR = 0xa000;
export const PD_ADDR = 0xb000; // four pages: 0xb000..0xefff
export const CMDLINE_ADDR = 0x20000;
export const CMDLINE_MAX = 0x10000;
export const EBDA_START = 0x9fc00;
/** The BIOS read-only area Linux scans for the RSDP: the ACPI tables start and must end in it. */
export const ACPI_ADDR = 0xe0000;
export const ACPI_END = 0x100000;
export const KERNEL_ADDR = 0x100000;

/** Low RAM stops here at the latest; [MMIO_HOLE_START, 4 GiB) is never RAM. */
export const MMIO_HOLE_START = 3 * GiB;
export const FOUR_GIB = 4 * GiB;

/** The hypercall device's shared memory: a KVM slot outside e820 RAM (docs/hypercall.md §3). */
export const HYPERCALL_SHMEM_ADDR = 0xc000_0000;
export const HYPERCALL_SHMEM_SIZE = 0x10_0000;
export const VIRTIO_MMIO_BASE = 0xd000_0000;
export const VIRTIO_MMIO_SIZE = 0x1000;
export const VIRTIO_GSI_BASE = 5;
export const IOAPIC_ADDR = 0xfec0_0000;
export const LAPIC_ADDR = 0xfee0_0000;
/** KVM's private pages for Intel VMX real-mode emulation (harmless on AMD). */
export const KVM_IDENTITY_MAP_ADDR = 0xfffb_c000;
export const KVM_TSS_ADDR = 0xfffb_d000;

export const COM1_PORT = 0x3f8;
export const COM1_IRQ = 4;
export const I8042_DATA_PORT = 0x60;
export const I8042_COMMAND_PORT = 0x64;
export const I8042_IRQ = 1;
export const PVPANIC_PORT = 0x505;
/** FADT SLEEP_CONTROL_REG and SLEEP_STATUS_REG (hardware-reduced ACPI): two 8-bit ports. */
export const ACPI_SLEEP_CONTROL_PORT = 0x600;
export const ACPI_SLEEP_STATUS_PORT = 0x601;
export const HYPERCALL_PORT = 0x700;
/** 0x700–0x73f: the hypercall device's register block. */
export const HYPERCALL_PORT_LEN = HC_IO_LEN;

/** IOAPIC pins 5..23: virtio-mmio devices one can place (each has a pin of its own). */
export const VIRTIO_MMIO_SLOTS = 24 - VIRTIO_GSI_BASE;

/** Address of virtio-mmio device i and its GSI. */
export const virtioMmioSlot = (i: number) => ({ base: VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE, size: VIRTIO_MMIO_SIZE, gsi: VIRTIO_GSI_BASE + i });
