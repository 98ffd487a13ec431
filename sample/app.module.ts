import { Module } from '@nestjs/common';
import { WorkflowDashboardModule, WorkflowModule } from 'nestjs-durable-workflow';
import { FakeModelClient } from './fake-model.client.js';
import { LocalOnlyGuard } from './local-only.guard.js';
import { ResearchAgentRunner } from './research-agent.runner.js';
import { RunNotifier } from './run-notifier.service.js';
import { RunsController } from './runs.controller.js';
import { SourceReaderRunner } from './source-reader.runner.js';

@Module({
  imports: [
    WorkflowModule.forRoot({
      connection: { url: process.env.WORKFLOW_DB_URL ?? 'mysql://root@127.0.0.1:3306/test' },
      // Keeps the sample's tables apart from anything else in the same database.
      tablePrefix: 'sample_',
      // Short drain so Ctrl+C returns quickly; unfinished steps are handed back, not lost.
      worker: { concurrency: 8, shutdownTimeoutMs: 5_000 },
      // Finished runs stay readable through GET /runs/:id for a day, then are purged.
      retention: { runsMs: 24 * 60 * 60 * 1000 },
      // An agent's state is a few KB. The 16 MiB default equals MariaDB's default
      // max_allowed_packet, which earns a startup warning there.
      maxPayloadBytes: 1024 * 1024,
    }),
    // The runs, their history and the actions at http://localhost:3000/workflows, for this
    // machine only: the page shows every run's input to whoever can open it.
    WorkflowDashboardModule.forRoot({ path: '/workflows', guards: [LocalOnlyGuard] }),
  ],
  controllers: [RunsController],
  providers: [FakeModelClient, ResearchAgentRunner, SourceReaderRunner, RunNotifier],
})
export class AppModule {}
