import { WorkflowConfigError } from './workflow-config.error.js';

/**
 * The shared DataSource's sessions run with an sql_mode under which the driver's
 * client-side escaping is wrong (NO_BACKSLASH_ESCAPES): every quoted value could end early.
 */
export class UnsafeSqlModeError extends WorkflowConfigError {
  constructor(
    message: string,
    /** The sql_mode flags that were refused. */
    readonly modes: string[],
  ) {
    super(message);
  }
}
