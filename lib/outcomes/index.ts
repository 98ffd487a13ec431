export * from './step-outcome.js';
export * from './step-error.js';
