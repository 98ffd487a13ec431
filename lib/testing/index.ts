/** Test helpers, from 'nestjs-durable-workflow/testing'. */
export { ManualClock } from './manual-clock.js';
export { drainWorkflows, type DrainOptions } from './drain.js';
