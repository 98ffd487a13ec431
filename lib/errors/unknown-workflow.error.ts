import { WorkflowError } from './workflow.error.js';

export class UnknownWorkflowError extends WorkflowError {
  constructor(
    readonly workflow: string,
    known: readonly string[],
  ) {
    super(
      `Unknown workflow "${workflow}". Known workflows: ${known.length ? known.map((n) => `"${n}"`).join(', ') : '(none)'}. ` +
        `Declare it with @StepRunner('${workflow}') on a provider of this app, or list it in ` +
        `WorkflowModule.forRoot({ workflows: ['${workflow}'] }) when another process runs it.`,
    );
  }
}
