export * from './step-runner.decorator.js';
export * from './on-terminal.decorator.js';
