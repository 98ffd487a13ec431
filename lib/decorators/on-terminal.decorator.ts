import { SetMetadata } from '@nestjs/common';
import { ON_TERMINAL_METADATA } from '../workflow.constants.js';

export interface OnTerminalMetadata {
  /** Workflow names this handler wants; undefined: all. */
  workflows?: string[];
}

/**
 * Marks a provider method `(outcome: RunOutcome) => void | Promise<void>` to be called
 * once a run ends (succeeded, failed or cancelled). Each handler gets its own durable,
 * at-least-once delivery, retried if it throws: make it idempotent.
 */
export function OnTerminal(workflows?: string | string[]): MethodDecorator {
  const list = workflows === undefined ? undefined : Array.isArray(workflows) ? [...workflows] : [workflows];
  return SetMetadata<string, OnTerminalMetadata>(ON_TERMINAL_METADATA, { workflows: list });
}
