/**
 * The accessor is the only reader of the decorators' metadata: what @StepRunner and
 * @OnTerminal write must come back unchanged, and anything undecorated must read as
 * "nothing" rather than throw, since the explorer asks about every provider in the app.
 */
import { Reflector } from '@nestjs/core';
import { OnTerminal, StepOutcome, StepRunner } from 'nestjs-durable-workflow';
import { WorkflowMetadataAccessor } from '../../lib/workflow-metadata.accessor.js';

@StepRunner('orders', {
  maxAttempts: 5,
  concurrency: 2,
  priority: -1,
  timeoutMs: 1_000,
  backoff: { baseMs: 10, maxMs: 80 },
})
class OrdersRunner {
  runStep() {
    return StepOutcome.succeed(null);
  }
}

@StepRunner('plain')
class PlainRunner {
  runStep() {
    return StepOutcome.succeed(null);
  }
}

class Undecorated {
  method(): void {}
}

const filters = ['a', 'b'];

class Hooks {
  @OnTerminal()
  everyWorkflow(): void {}

  @OnTerminal('a')
  onlyA(): void {}

  @OnTerminal(filters)
  aOrB(): void {}

  notAHandler(): void {}
}

describe('WorkflowMetadataAccessor', () => {
  const accessor = new WorkflowMetadataAccessor(new Reflector());

  it('reads back the name and options given to @StepRunner', () => {
    expect(accessor.getStepRunner(OrdersRunner)).toEqual({
      name: 'orders',
      options: { maxAttempts: 5, concurrency: 2, priority: -1, timeoutMs: 1_000, backoff: { baseMs: 10, maxMs: 80 } },
    });
  });

  it('gives @StepRunner without options an empty options object, so the explorer can read fields off it', () => {
    expect(accessor.getStepRunner(PlainRunner)).toEqual({ name: 'plain', options: {} });
  });

  it('finds no runner on undecorated classes, instances and non-functions', () => {
    expect(accessor.getStepRunner(Undecorated)).toBeUndefined();
    // An instance is not the class: the explorer must pass constructors, never values.
    expect(accessor.getStepRunner(new OrdersRunner())).toBeUndefined();
    for (const v of [undefined, null, 'orders', 42, {}]) expect(accessor.getStepRunner(v)).toBeUndefined();
  });

  it('reads @OnTerminal filters: none means every workflow, a string or an array lists them', () => {
    const proto = Hooks.prototype;
    expect(accessor.getOnTerminal(proto.everyWorkflow)).toEqual({ workflows: undefined });
    expect(accessor.getOnTerminal(proto.onlyA)).toEqual({ workflows: ['a'] });
    expect(accessor.getOnTerminal(proto.aOrB)).toEqual({ workflows: ['a', 'b'] });
  });

  it('keeps its own copy of a filter array, so mutating the caller’s array later changes nothing', () => {
    filters.push('c');
    try {
      expect(accessor.getOnTerminal(Hooks.prototype.aOrB)).toEqual({ workflows: ['a', 'b'] });
    } finally {
      filters.pop();
    }
  });

  it('finds no handler on plain methods and non-functions', () => {
    expect(accessor.getOnTerminal(Hooks.prototype.notAHandler)).toBeUndefined();
    expect(accessor.getOnTerminal(Undecorated.prototype.method)).toBeUndefined();
    for (const v of [undefined, null, 'everyWorkflow', {}]) expect(accessor.getOnTerminal(v)).toBeUndefined();
  });

  it('does not mistake one decorator for the other', () => {
    expect(accessor.getOnTerminal(OrdersRunner)).toBeUndefined();
    expect(accessor.getStepRunner(Hooks.prototype.everyWorkflow)).toBeUndefined();
  });
});
