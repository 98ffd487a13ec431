/**
 * Compiled (never run) by test/unit/types.spec.ts: what a user writes against the
 * public entry point must type-check. Each `@ts-expect-error` proves the interface
 * is really enforced, not an `any` that accepts everything.
 */
import { Injectable } from '@nestjs/common';
import { type Step, StepOutcome, StepRunner } from 'nestjs-durable-workflow';

interface In {
  topic: string;
}
interface Out {
  words: number;
}

@Injectable()
@StepRunner('plain')
export class PlainRunner implements StepRunner {
  runStep(step: Step) {
    return StepOutcome.succeed(step.payload);
  }
}

@Injectable()
@StepRunner('typed', { maxAttempts: 2 })
export class TypedRunner implements StepRunner<In, Out> {
  async runStep(step: Step<In>) {
    return StepOutcome.succeed({ words: step.payload.topic.split(' ').length });
  }
}

@StepRunner('sync')
export class SyncRunner implements StepRunner<In, Out> {
  runStep(step: Step<In>): StepOutcome<In, Out> {
    return step.stepNumber === 0
      ? StepOutcome.continue({ topic: step.payload.topic })
      : StepOutcome.succeed({ words: 0 });
  }
}

// The interface as a value's type, e.g. a registry of runners in the user's code.
export const runners: StepRunner[] = [new PlainRunner(), new TypedRunner(), new SyncRunner()];

// @ts-expect-error a class without runStep does not implement StepRunner
export class Missing implements StepRunner {}

export class WrongResult implements StepRunner<In, Out> {
  // @ts-expect-error the result must be an Out
  runStep(_step: Step<In>) {
    return StepOutcome.succeed({ words: 'many' });
  }
}

// The decorator is still a decorator factory with its options checked.
// @ts-expect-error maxAttempts is a number
@StepRunner('bad-options', { maxAttempts: 'three' })
export class BadOptions {}
