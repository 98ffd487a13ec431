import { Module } from '@nestjs/common';
import { DiscoveryModule } from '@nestjs/core';
import { resolveConfig } from './workflow.config.js';
import { WORKFLOW_CONFIG } from './workflow.constants.js';
import { WorkflowExplorer } from './workflow.explorer.js';
import { WorkflowMetadataAccessor } from './workflow-metadata.accessor.js';
import { ConfigurableWorkflowModule, WORKFLOW_MODULE_OPTIONS } from './workflow.module-definition.js';
import { WorkflowRegistry } from './workflow.registry.js';
import { WorkflowService } from './workflow.service.js';
import { WorkflowConnection } from './storage/workflow-connection.js';
import { WorkflowStorage } from './storage/workflow.storage.js';
import { SettleBatcher } from './worker/settle-batcher.js';
import { JobExecutor } from './worker/job-executor.js';
import { WorkflowNotifier } from './workflow.notifier.js';
import { WorkflowWorker } from './worker/workflow.worker.js';
import type { WorkflowModuleOptions } from './interfaces/workflow-module-options.interface.js';
import { WorkflowHealthIndicator } from './health/workflow.health-indicator.js';
import { loadOtel } from './observability/otel.js';
import { QueueLagGauge } from './observability/queue-lag-gauge.js';

/** Resolves once `@opentelemetry/api` is loaded (or known absent), while the providers are built. */
const OTEL_LOADED = Symbol('OTEL_LOADED');

/**
 * Durable step workflows on MySQL/MariaDB. `WorkflowModule.forRoot(options)` or
 * `forRootAsync({ imports, inject, useFactory | useClass | useExisting })`; global by
 * default (`isGlobal: false` to scope it).
 */
@Module({
  imports: [DiscoveryModule],
  providers: [
    {
      provide: WORKFLOW_CONFIG,
      useFactory: (options: WorkflowModuleOptions) => resolveConfig(options),
      inject: [WORKFLOW_MODULE_OPTIONS],
    },
    WorkflowMetadataAccessor,
    WorkflowRegistry,
    WorkflowExplorer,
    WorkflowNotifier,
    WorkflowConnection,
    WorkflowStorage,
    SettleBatcher,
    JobExecutor,
    WorkflowWorker,
    WorkflowService,
    { provide: OTEL_LOADED, useFactory: async () => (await loadOtel()) !== null },
    QueueLagGauge,
    WorkflowHealthIndicator,
  ],
  // WorkflowStorage for WorkflowDashboardModule's reads; it is not in lib/index.ts, so not public API.
  exports: [WorkflowService, WorkflowWorker, WorkflowHealthIndicator, WorkflowStorage],
})
export class WorkflowModule extends ConfigurableWorkflowModule {}
