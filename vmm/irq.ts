// IrqLine over a KVM irqfd: a write to an eventfd becomes an edge on the GSI inside the kernel,
// with no ioctl and no vCPU involvement. The only way device models raise interrupts.

import type { Vm } from '../kvm/kvm';
import { close, eventfd, eventfdSignal } from '../kvm/libc';
import type { IrqLine } from '../devices/irq';

export class IrqfdLine implements IrqLine {
  readonly fd: number;
  triggered = 0;

  constructor(vm: Vm, readonly gsi: number) {
    this.fd = eventfd();
    vm.registerIrqfd(this.fd, gsi);
  }

  trigger(): void {
    this.triggered++;
    eventfdSignal(this.fd);
  }

  close(): void {
    close(this.fd);
  }
}
