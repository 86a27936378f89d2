// Public surface of the hypercall device (docs/hypercall.md). vmm imports from here only.
export * from './registers';
export { HypercallDevice, HypercallError } from './device';
export type {
  AgentInfo,
  AnyHintHandler,
  HintHandler,
  HintTypeBudget,
  HypercallCounters,
  HypercallDeviceOptions,
  HypercallErrorCode,
  HypercallRequest,
  HypercallResult,
  LostProgram,
  PackageBytes,
} from './device';
export { mailboxLayout, Outcome, type OutcomeName, type MailboxLayout } from './shmem';
