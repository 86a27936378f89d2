// Public surface of the guest-agent client (docs/agent-protocol.md). vmm and the CLI
// import from here only.
export { AgentClient, AgentError } from './client';
export type { AgentClientOptions, AgentErrorCode, Connector, ExecHandle, ExecOptions, ExecResult, PutOptions, RequestOptions } from './client';
export { AGENT_VSOCK_PORT, hybridVsockConnector, unixConnector } from './connect';
export { AgentDoorbell } from './doorbell';
export type { DoorbellOptions } from './doorbell';
