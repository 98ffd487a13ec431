import { Injectable } from '@nestjs/common';
import { type Step, StepOutcome, StepRunner } from 'nestjs-durable-workflow';
import { FakeModelClient } from './fake-model.client.js';

/** What the research agent hands each reader: one source to read about its topic. */
export interface SourceToRead {
  topic: string;
  source: string;
}

/** A reader's result, which the agent's next step finds in `step.children`. */
export interface SourceNotes {
  source: string;
  notes: string;
}

/**
 * Reads one source: a run of its own, one model call, started by the research agent's
 * fan-out. Four read at once per process; a failed read is retried like any step, and
 * the agent drafts from the sources that could be read.
 */
@Injectable()
@StepRunner('source-reader', {
  concurrency: 4,
  maxAttempts: 3,
  backoff: { baseMs: 500, maxMs: 5_000 },
  timeoutMs: 30_000,
})
export class SourceReaderRunner {
  constructor(private readonly model: FakeModelClient) {}

  async runStep(step: Step<SourceToRead>): Promise<StepOutcome<never, SourceNotes>> {
    const { topic, source } = step.payload;
    const notes = await this.model.complete({
      prompt: `Read what ${source} says about ${topic}.`,
      signal: step.signal,
    });
    return StepOutcome.succeed({ source, notes });
  }
}
