import { WorkflowConfigError } from './workflow-config.error.js';

/**
 * The module's own pool could not open a connection (server down, wrong host or port,
 * bad credentials, unknown database): the message names the address and the server's reason.
 */
export class DatabaseUnreachableError extends WorkflowConfigError {}
