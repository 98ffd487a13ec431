import { WorkflowError } from './workflow.error.js';

export class ReservedHeaderError extends WorkflowError {
  constructor(readonly header: string) {
    super(`Header "${header}" is reserved: keys starting with "workflow." belong to the runtime. Rename it.`);
  }
}
