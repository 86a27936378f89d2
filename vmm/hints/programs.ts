// The hint programs tsvmm knows: each can be loaded by name (`tsvmm bpf load NAME`), and the
// records of its kinds are decoded, handled and shown in the hint stream. Add yours here
// (docs/hint-programs.md): one import, one list entry.

import { affinityProgram } from './affinity';
import { prioProgram } from './prio';
import type { HintProgram } from './registry';

export const HINT_PROGRAMS: readonly HintProgram[] = [
  affinityProgram,
  prioProgram,
];
