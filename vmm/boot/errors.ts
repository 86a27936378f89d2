// The error a loader raises for an image it will not boot: the message says which file and why.

export class KernelImageError extends Error {
  constructor(path: string, reason: string) {
    super(`${path}: ${reason}`);
    this.name = 'KernelImageError';
  }
}
