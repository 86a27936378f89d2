// The error a loader raises for an image it will not boot: the message says which file and why.

import { TsvmmError } from '../../lib/errors';

export class KernelImageError extends TsvmmError {
  constructor(path: string, reason: string) {
    super(`${path}: ${reason}`);
  }
}
