import { Injectable } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import { ON_TERMINAL_METADATA, STEP_RUNNER_METADATA } from './workflow.constants.js';
import type { StepRunnerMetadata } from './decorators/step-runner.decorator.js';
import type { OnTerminalMetadata } from './decorators/on-terminal.decorator.js';

/** The only reader of this module's decorator metadata. */
@Injectable()
export class WorkflowMetadataAccessor {
  constructor(private readonly reflector: Reflector) {}

  getStepRunner(target: unknown): StepRunnerMetadata | undefined {
    if (typeof target !== 'function') return undefined;
    return this.reflector.get<StepRunnerMetadata>(STEP_RUNNER_METADATA, target);
  }

  getOnTerminal(method: unknown): OnTerminalMetadata | undefined {
    if (typeof method !== 'function') return undefined;
    return this.reflector.get<OnTerminalMetadata>(ON_TERMINAL_METADATA, method);
  }
}
