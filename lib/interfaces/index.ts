export * from './workflow-module-options.interface.js';
export * from './step-runner.interface.js';
export * from './step.interface.js';
export * from './run.interface.js';
export * from './schedule.interface.js';
