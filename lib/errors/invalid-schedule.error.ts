import { WorkflowError } from './workflow.error.js';

/** A ScheduleSpec that cannot be stored: a bad id, cron, time zone, workflow or field. Thrown before anything is written. */
export class InvalidScheduleError extends WorkflowError {
  constructor(
    readonly scheduleId: string | undefined,
    reason: string,
  ) {
    super(`Schedule ${scheduleId === undefined ? '(no id)' : JSON.stringify(scheduleId)}: ${reason}`);
  }
}
