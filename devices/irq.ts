// The interrupt line a device raises. vmm/ implements it (irqfd or KVM_IRQ_LINE on the in-kernel
// irqchip); device models only ever see this interface and must not reach KVM themselves.

export interface IrqLine {
  /** Delivers one edge on the device's GSI. Safe to call from the device's thread at any time. */
  trigger(): void;
  /**
   * The eventfd whose write is that edge (a KVM irqfd), when the line has one: another thread
   * of this process (a drive's I/O thread) writes it directly.
   */
  readonly fd?: number;
}
