import { WorkflowConfigError } from './workflow-config.error.js';

/** The DataSource is not MySQL/MariaDB, or the server is older than MySQL 8.0 / MariaDB 10.6. */
export class UnsupportedDatabaseError extends WorkflowConfigError {}
