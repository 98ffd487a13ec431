export { WorkflowModule } from './workflow.module.js';
export { WORKFLOW_MODULE_OPTIONS, type WorkflowModuleAsyncOptions } from './workflow.module-definition.js';
export { WorkflowService } from './workflow.service.js';
export { WorkflowWorker } from './worker/workflow.worker.js';
export {
  WorkflowHealthIndicator,
  type WorkflowHealthOptions,
  type WorkflowHealthResult,
} from './health/workflow.health-indicator.js';
export { StepRunner, OnTerminal } from './decorators/index.js';
export type { StepRunnerMetadata, OnTerminalMetadata } from './decorators/index.js';
export { StepOutcome, StepError, type StepErrorKind } from './outcomes/index.js';
export * from './errors/index.js';
export type * from './interfaces/index.js';
export { STEP_REF } from './workflow.constants.js';
export { WORKFLOW_MIGRATIONS, WORKFLOW_TABLES, createWorkflowMigrations } from './storage/schema/migrations.js';
export { WorkflowDashboardModule } from './dashboard/workflow-dashboard.module.js';
export type { WorkflowDashboardOptions } from './dashboard/workflow-dashboard-options.interface.js';
