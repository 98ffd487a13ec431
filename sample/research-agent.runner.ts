import { Injectable, Logger } from '@nestjs/common';
import { type Step, StepOutcome, StepRunner } from 'nestjs-durable-workflow';
import { FakeModelClient, RateLimitedError } from './fake-model.client.js';

export interface ResearchInput {
  topic: string;
}

/** What travels from one step to the next; each step adds what its model call produced. */
interface ResearchState {
  topic: string;
  summary?: string;
  draft?: string;
  /**
   * Lets the simulated 429 fire once per run. It has to live in the payload: the
   * retried draft is a new step whose `attempts` starts again at 1.
   */
  draftThrottled?: boolean;
}

export interface ResearchResult {
  topic: string;
  summary: string;
  draft: string;
  review: string;
}

/**
 * research → draft → review, one model call per step. Each step's output is stored
 * before the next begins, so a crash or redeploy resumes at the unfinished step
 * instead of paying for the finished ones again.
 */
@Injectable()
@StepRunner('research-agent', { maxAttempts: 3, backoff: { baseMs: 500, maxMs: 5_000 }, timeoutMs: 30_000 })
export class ResearchAgentRunner {
  private readonly logger = new Logger(ResearchAgentRunner.name);

  constructor(private readonly model: FakeModelClient) {}

  async runStep(step: Step<ResearchState>): Promise<StepOutcome<ResearchState, ResearchResult>> {
    const state = step.payload;
    this.logger.log(`run ${step.runId} step ${step.stepNumber} (attempt ${step.attempts})`);

    // Step 0's payload is the raw request body: validate it once, here, and fail the
    // run with a reason rather than retrying something that can never succeed.
    if (step.stepNumber === 0) {
      const topic = typeof state?.topic === 'string' ? state.topic.trim() : '';
      if (!topic) return StepOutcome.fail('topic is empty');
      const summary = await this.model.complete({ prompt: `List the key facts about ${topic}.`, signal: step.signal });
      return StepOutcome.continue({ topic, summary });
    }

    if (state.draft === undefined) {
      try {
        const draft = await this.model.complete({
          prompt: `Write a short article on ${state.topic} from the notes.`,
          signal: step.signal,
          rateLimited: !state.draftThrottled,
        });
        return StepOutcome.continue({ ...state, draft });
      } catch (err) {
        // A 429 is not a failure: come back later without holding a worker or using
        // up an attempt. The next step retries the draft from the same state.
        if (err instanceof RateLimitedError) {
          this.logger.warn(`run ${step.runId}: rate limited, retrying the draft in ${err.retryAfterMs} ms`);
          return StepOutcome.continueAfter({ ...state, draftThrottled: true }, err.retryAfterMs);
        }
        throw err;
      }
    }

    const review = await this.model.complete({ prompt: `Review the article on ${state.topic}.`, signal: step.signal });
    return StepOutcome.succeed({ topic: state.topic, summary: state.summary!, draft: state.draft, review });
  }
}
