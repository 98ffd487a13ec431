import { WorkflowConfigError } from './workflow-config.error.js';

/** `{ manager }` belongs to another DataSource than the one WorkflowModule writes through. */
export class ForeignEntityManagerError extends WorkflowConfigError {}
