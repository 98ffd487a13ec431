import { Injectable, Logger } from '@nestjs/common';
import { OnTerminal, type RunOutcome } from 'nestjs-durable-workflow';

/**
 * Where an app would send a webhook, an e-mail or a websocket message. Delivery is
 * at-least-once, so a real handler must tolerate seeing the same run twice
 * (e.g. key the notification by runId).
 */
@Injectable()
export class RunNotifier {
  private readonly logger = new Logger(RunNotifier.name);

  @OnTerminal('research-agent')
  notify(outcome: RunOutcome): void {
    const took = outcome.finishedAt.getTime() - outcome.submittedAt.getTime();
    const detail = outcome.status === 'succeeded' ? JSON.stringify(outcome.result) : (outcome.error ?? '(no reason)');
    this.logger.log(`run ${outcome.runId} ${outcome.status} after ${took} ms at step ${outcome.finalStep}: ${detail}`);
  }
}
