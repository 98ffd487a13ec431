import { type BeforeApplicationShutdown, Inject, Injectable, type OnApplicationBootstrap } from '@nestjs/common';
import type * as OtelApi from '@opentelemetry/api';
import type { ResolvedWorkflowConfig } from '../workflow.config.js';
import { WORKFLOW_CONFIG } from '../workflow.constants.js';
import { WorkflowRegistry } from '../workflow.registry.js';
import { WorkflowStorage } from '../storage/workflow.storage.js';
import { activeMeter, otel } from './otel.js';
import { ATTR } from './telemetry.js';

/** How often the registered meter is looked up again, so an SDK registered later gets the gauge too. */
const WATCH_MS = 1_000;

/**
 * `workflow.queue.lag` (gauge, ms): per workflow this process knows (its runners and
 * `workflows`), how long its oldest due step has waited, 0 when none waits. Observed
 * when the SDK's reader collects, by one index read (storage/queue-lag.ts); with no SDK
 * registered nothing is read. The meter is looked up once a second (no I/O): a new
 * one (an SDK registered, or registered again) gets the gauge, the old one loses it.
 */
@Injectable()
export class QueueLagGauge implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private meter?: OtelApi.Meter;
  private gauge?: OtelApi.ObservableGauge;
  private timer?: NodeJS.Timeout;
  private open = false;

  constructor(
    @Inject(WORKFLOW_CONFIG) private readonly config: ResolvedWorkflowConfig,
    private readonly storage: WorkflowStorage,
    private readonly registry: WorkflowRegistry,
  ) {}

  onApplicationBootstrap(): void {
    if (otel() === null) return; // the API is not installed: nothing can ever be registered
    this.open = true;
    this.watch();
    this.timer = setInterval(() => this.watch(), WATCH_MS);
    this.timer.unref();
  }

  beforeApplicationShutdown(): void {
    this.open = false;
    clearInterval(this.timer);
    this.detach();
  }

  private watch(): void {
    const o = otel();
    const meter = o ? activeMeter(o) : undefined;
    if (meter === this.meter) return;
    this.detach();
    if (!meter || !this.open) return;
    this.meter = meter;
    this.gauge = meter.createObservableGauge('workflow.queue.lag', {
      description: 'How long the oldest due step of each workflow has waited to be claimed',
      unit: 'ms',
    });
    this.gauge.addCallback(this.observe);
  }

  private detach(): void {
    this.gauge?.removeCallback(this.observe);
    this.gauge = undefined;
    this.meter = undefined;
  }

  private readonly observe = async (result: OtelApi.ObservableResult): Promise<void> => {
    if (!this.open) return;
    const workflows = [...this.registry.submittable];
    let oldest: Map<string, number>;
    try {
      oldest = await this.storage.oldestDueByQueue(workflows);
    } catch {
      return; // the database is away: no observation rather than a wrong one (the health check says why)
    }
    const now = this.config.clock.now();
    for (const workflow of workflows) {
      const at = oldest.get(workflow);
      result.observe(at === undefined ? 0 : Math.max(0, now - at), { [ATTR.workflow]: workflow });
    }
  };
}
