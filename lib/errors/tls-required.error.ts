import { WorkflowConfigError } from './workflow-config.error.js';

/** The server refuses connections without TLS (require_secure_transport): set `connection.ssl`. */
export class TlsRequiredError extends WorkflowConfigError {}
