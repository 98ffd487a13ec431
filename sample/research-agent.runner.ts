import { Injectable, Logger } from '@nestjs/common';
import { type Step, StepOutcome, StepRunner } from 'nestjs-durable-workflow';
import { FakeModelClient, RateLimitedError } from './fake-model.client.js';
import type { SourceNotes, SourceToRead } from './source-reader.runner.js';

export interface ResearchInput {
  topic: string;
  /** Read these sources in parallel, one `source-reader` child run each, and draft from their notes. */
  sources?: string[];
  /** Wait for a person to approve the draft (`POST /runs/:id/approve`) before the review. */
  approval?: boolean;
}

/** What `POST /runs/:id/approve` sends as the `approval` signal. */
export interface ApprovalDecision {
  approved: boolean;
  note?: string;
}

/** How long a draft waits for a person before the run gives up. */
const APPROVAL_TIMEOUT_MS = 60 * 60_000;

/** What travels from one step to the next; each step adds what its model call produced. */
interface ResearchState {
  topic: string;
  /** The sources being read by child runs (the fan-out); their notes become the summary. */
  sources?: string[];
  summary?: string;
  draft?: string;
  /** 'waiting' once the draft is written and a person has to approve it; 'approved' after. */
  approval?: 'wanted' | 'waiting' | 'approved';
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
  /** With `sources`: those whose notes made the summary (a source that could not be read is left out). */
  sources?: string[];
}

/**
 * research → draft → review, one model call per step. Each step's output is stored
 * before the next begins, so a crash or redeploy resumes at the unfinished step
 * instead of paying for the finished ones again. With `sources`, the research step fans
 * out instead: one child run per source, read in parallel (by any process), and the
 * next step joins their notes into the summary.
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
      const input = state as ResearchInput;
      const topic = typeof input?.topic === 'string' ? input.topic.trim() : '';
      if (!topic) return StepOutcome.fail('topic is empty');
      // In the request `approval` is a boolean; in the state, where the approval stands.
      const next: ResearchState = { topic, ...(input.approval === true ? { approval: 'wanted' as const } : {}) };
      if (input.sources?.length) {
        // Fan out: the readers start in this step's settling transaction, and this run waits,
        // holding no worker, until the last of them has ended.
        const readers = input.sources.map((source) => ({
          workflow: 'source-reader',
          input: { topic, source } satisfies SourceToRead,
        }));
        return StepOutcome.spawn(readers, { ...next, sources: input.sources });
      }
      const summary = await this.model.complete({ prompt: `List the key facts about ${topic}.`, signal: step.signal });
      return StepOutcome.continue({ ...next, summary });
    }

    if (state.summary === undefined) {
      // The join: every reader's outcome, in the order of `sources`, whichever process ran it.
      const read = (step.children ?? []).filter((c) => c.status === 'succeeded').map((c) => c.result as SourceNotes);
      if (read.length === 0) return StepOutcome.fail(`none of the ${state.sources?.length ?? 0} sources could be read`);
      const summary = read.map((r) => `[${r.source}] ${r.notes}`).join('\n');
      return StepOutcome.continue({ ...state, sources: read.map((r) => r.source), summary });
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

    // A human in the loop: the run waits without holding a worker until the approval
    // signal comes (or the timeout), then goes on from this very state.
    if (state.approval === 'wanted')
      return StepOutcome.waitForSignal(
        'approval',
        { ...state, approval: 'waiting' },
        { timeoutMs: APPROVAL_TIMEOUT_MS },
      );
    if (state.approval === 'waiting') {
      const got = step.received;
      if (!got || got.timedOut) return StepOutcome.fail('nobody approved the draft within an hour');
      const decision = got.data as ApprovalDecision;
      if (!decision?.approved) return StepOutcome.cancel(`draft rejected${decision?.note ? `: ${decision.note}` : ''}`);
      return StepOutcome.continue({ ...state, approval: 'approved' });
    }

    const review = await this.model.complete({ prompt: `Review the article on ${state.topic}.`, signal: step.signal });
    return StepOutcome.succeed({
      topic: state.topic,
      summary: state.summary,
      draft: state.draft,
      review,
      ...(state.sources ? { sources: state.sources } : {}),
    });
  }
}
