/**
 * The explorer turns whatever providers an app declares into registry bindings. Built
 * from DiscoveryModule and the module's own discovery pieces only, with the config
 * token given directly: nothing here can reach a database.
 */
import { jest } from '@jest/globals';
import { Inject, Injectable, Logger, type Provider, Scope } from '@nestjs/common';
import { DiscoveryModule } from '@nestjs/core';
import { Test, type TestingModule, type TestingModuleBuilder } from '@nestjs/testing';
import {
  OnTerminal,
  type RunOutcome,
  STEP_REF,
  type Step,
  StepOutcome,
  StepRunner,
  WorkflowConfigError,
  type WorkflowModuleOptions,
} from 'nestjs-durable-workflow';
import { resolveConfig } from '../../lib/workflow.config.js';
import { WORKFLOW_CONFIG } from '../../lib/workflow.constants.js';
import { WorkflowExplorer } from '../../lib/workflow.explorer.js';
import { WorkflowMetadataAccessor } from '../../lib/workflow-metadata.accessor.js';
import { WorkflowRegistry } from '../../lib/workflow.registry.js';
import { thrownBy } from '../utils/wait.js';

// ---------------------------------------------------------------- runners

@StepRunner('by-class')
class ByClassRunner {
  runStep() {
    return StepOutcome.succeed('class');
  }
}

@StepRunner('by-value')
class ByValueRunner {
  runStep() {
    return StepOutcome.succeed('value');
  }
}

class Greeting {
  readonly word = 'hello';
}

@StepRunner('by-factory')
class ByFactoryRunner {
  constructor(readonly greeting: Greeting) {}
  runStep() {
    return StepOutcome.succeed(this.greeting.word);
  }
}

@StepRunner('aliased')
@Injectable()
class AliasedRunner {
  runStep() {
    return StepOutcome.succeed('aliased');
  }
}

@StepRunner('per-step')
@Injectable({ scope: Scope.REQUEST })
class PerStepRunner {
  constructor(@Inject(STEP_REF) readonly step: Step) {}
  runStep() {
    return StepOutcome.succeed(this.step.runId);
  }
}

@StepRunner('tuned', {
  maxAttempts: 7,
  concurrency: 3,
  priority: -5,
  timeoutMs: 250,
  backoff: { baseMs: 10, maxMs: 90 },
})
class TunedRunner {
  runStep() {
    return StepOutcome.succeed(null);
  }
}

@StepRunner('taken')
class FirstClaimant {
  runStep() {
    return StepOutcome.succeed(1);
  }
}

@StepRunner('taken')
class SecondClaimant {
  runStep() {
    return StepOutcome.succeed(2);
  }
}

@StepRunner('no-run-step')
class RunnerWithoutRunStep {}

@StepRunner('real')
class RealRunner {
  runStep(): never {
    throw new Error('the real runner must not be bound once it is overridden');
  }
}

@StepRunner('a')
class ARunner {
  runStep() {
    return StepOutcome.succeed('a');
  }
}

@StepRunner('b')
class BRunner {
  runStep() {
    return StepOutcome.succeed('b');
  }
}

@Injectable()
class Hooks {
  readonly seen: Array<[string, string]> = [];

  @OnTerminal()
  everyWorkflow(o: RunOutcome) {
    this.seen.push(['everyWorkflow', o.runId]);
  }

  @OnTerminal('a')
  onlyA(o: RunOutcome) {
    this.seen.push(['onlyA', o.runId]);
  }

  @OnTerminal(['a', 'b'])
  aOrB(o: RunOutcome) {
    this.seen.push(['aOrB', o.runId]);
  }

  notAHandler() {
    throw new Error('only @OnTerminal methods are handlers');
  }
}

// ---------------------------------------------------------------- helpers

/** Parsed only: resolveConfig reads the URL for its errors and never connects. */
const CONNECTION = { url: 'mysql://unit@127.0.0.1:1/never' };

function builder(providers: Provider[], options: Partial<WorkflowModuleOptions> = {}): TestingModuleBuilder {
  return Test.createTestingModule({
    imports: [DiscoveryModule],
    providers: [
      { provide: WORKFLOW_CONFIG, useValue: resolveConfig({ connection: CONNECTION, ...options }) },
      WorkflowMetadataAccessor,
      WorkflowRegistry,
      WorkflowExplorer,
      ...providers,
    ],
  });
}

/** init() runs the explorer's onModuleInit, the same hook the real module relies on. */
async function explore(b: TestingModuleBuilder): Promise<{ app: TestingModule; registry: WorkflowRegistry }> {
  const app = await b.compile();
  await app.init();
  return { app, registry: app.get(WorkflowRegistry) };
}

function outcome(runId: string, workflow: string): RunOutcome {
  const at = new Date(0);
  return {
    runId,
    workflow,
    status: 'succeeded',
    headers: {},
    finalStep: 0,
    submittedAt: at,
    finishedAt: at,
    ending: 1,
  };
}

const step = (runId: string) => ({ runId }) as unknown as Step;

// ---------------------------------------------------------------- specs

describe('WorkflowExplorer', () => {
  const apps: TestingModule[] = [];
  afterEach(async () => {
    for (const app of apps.splice(0)) await app.close();
  });
  async function started(b: TestingModuleBuilder) {
    const r = await explore(b);
    apps.push(r.app);
    return r;
  }

  it('binds runners from useClass, useValue, useFactory and class providers to the instance Nest built', async () => {
    const value = new ByValueRunner();
    const { app, registry } = await started(
      builder([
        { provide: 'CLASS_TOKEN', useClass: ByClassRunner },
        { provide: 'VALUE_TOKEN', useValue: value },
        Greeting,
        { provide: 'FACTORY_TOKEN', useFactory: (g: Greeting) => new ByFactoryRunner(g), inject: [Greeting] },
      ]),
    );
    expect([...registry.runners.keys()].sort()).toEqual(['by-class', 'by-factory', 'by-value']);
    expect(await registry.runners.get('by-class')!.resolve({})).toBe(app.get('CLASS_TOKEN'));
    expect(await registry.runners.get('by-value')!.resolve({})).toBe(value);
    const fromFactory = await registry.runners.get('by-factory')!.resolve({});
    expect(fromFactory).toBe(app.get('FACTORY_TOKEN'));
    expect(await fromFactory.runStep(step('r'))).toEqual(StepOutcome.succeed('hello'));
    // Labels name the user's class, whatever token it was provided under.
    expect(registry.runners.get('by-class')!.label).toBe('ByClassRunner#runStep');
    expect(registry.runners.get('by-factory')!.label).toBe('ByFactoryRunner#runStep');
    for (const name of ['by-class', 'by-value', 'by-factory']) expect(registry.submittable.has(name)).toBe(true);
  });

  it('registers a runner reachable through a useExisting alias once, without a duplicate warning', async () => {
    const warn = jest.spyOn(Logger.prototype, 'warn');
    try {
      const { app, registry } = await started(
        builder([AliasedRunner, { provide: 'ALIAS', useExisting: AliasedRunner }]),
      );
      expect([...registry.runners.keys()]).toEqual(['aliased']);
      expect(await registry.runners.get('aliased')!.resolve({})).toBe(app.get(AliasedRunner));
      expect(warn).not.toHaveBeenCalled();
    } finally {
      warn.mockRestore();
    }
  });

  it('builds a request-scoped runner per step, with that step injected', async () => {
    const { registry } = await started(builder([PerStepRunner]));
    const binding = registry.runners.get('per-step')!;
    const first = step('run-1');
    const second = step('run-2');
    const a = (await binding.resolve(first)) as PerStepRunner;
    const b = (await binding.resolve(second)) as PerStepRunner;
    expect(a).toBeInstanceOf(PerStepRunner);
    expect(a).not.toBe(b);
    expect(a.step).toBe(first);
    expect(b.step).toBe(second);
    expect(await a.runStep()).toEqual(StepOutcome.succeed('run-1'));
  });

  it('applies @StepRunner options over the module defaults', async () => {
    const { registry } = await started(
      builder([TunedRunner, ByClassRunner], {
        worker: { concurrency: 9 },
        defaults: { maxAttempts: 4, priority: 2, backoff: { baseMs: 5, maxMs: 50 } },
      }),
    );
    const tuned = registry.runners.get('tuned')!;
    expect({ ...tuned, resolve: undefined }).toEqual({
      name: 'tuned',
      label: 'TunedRunner#runStep',
      maxAttempts: 7,
      backoff: { baseMs: 10, maxMs: 90 },
      priority: -5,
      concurrency: 3,
      timeoutMs: 250,
      resolve: undefined,
    });
    const plain = registry.runners.get('by-class')!;
    expect([plain.maxAttempts, plain.backoff, plain.priority, plain.concurrency, plain.timeoutMs]).toEqual([
      4,
      { baseMs: 5, maxMs: 50 },
      2,
      9,
      undefined,
    ]);
    expect(registry.maxAttempts).toBe(4);
  });

  it('rejects two classes claiming one workflow name, naming both', async () => {
    const err = await thrownBy(() => explore(builder([FirstClaimant, SecondClaimant])));
    expect(err).toBeInstanceOf(WorkflowConfigError);
    expect(err.message).toContain('"taken"');
    expect(err.message).toContain('FirstClaimant');
    expect(err.message).toContain('SecondClaimant');
  });

  it('rejects a @StepRunner class without runStep, naming it and the fix', async () => {
    const err = await thrownBy(() => explore(builder([RunnerWithoutRunStep])));
    expect(err).toBeInstanceOf(WorkflowConfigError);
    expect(err.message).toContain('RunnerWithoutRunStep');
    expect(err.message).toContain('runStep(step)');
  });

  it('registers each @OnTerminal method as its own handler queue, filtered by workflow', async () => {
    const { app, registry } = await started(builder([Hooks, ARunner, BRunner]));
    const byLabel = new Map([...registry.handlers.values()].map((h) => [h.label, h]));
    expect([...byLabel.keys()].sort()).toEqual(['Hooks#aOrB', 'Hooks#everyWorkflow', 'Hooks#onlyA']);
    expect(byLabel.get('Hooks#everyWorkflow')!.workflows).toBeUndefined();
    expect([...byLabel.get('Hooks#onlyA')!.workflows!]).toEqual(['a']);
    expect([...byLabel.get('Hooks#aOrB')!.workflows!].sort()).toEqual(['a', 'b']);
    // The queue name is what deliveries are stored under: it must follow the class and method names.
    expect(byLabel.get('Hooks#onlyA')!.queue).toBe('~terminal:Hooks#onlyA');

    const labels = (workflow: string) =>
      registry
        .queuesFor(workflow)
        .map((q) => registry.handlers.get(q)!.label)
        .sort();
    expect(labels('a')).toEqual(['Hooks#aOrB', 'Hooks#everyWorkflow', 'Hooks#onlyA']);
    expect(labels('b')).toEqual(['Hooks#aOrB', 'Hooks#everyWorkflow']);
    expect(labels('elsewhere')).toEqual(['Hooks#everyWorkflow']);

    await byLabel.get('Hooks#onlyA')!.invoke(outcome('run-9', 'a'));
    expect(app.get(Hooks).seen).toEqual([['onlyA', 'run-9']]);
  });

  it('keeps the workflow bound to the fake after overrideProvider(Runner).useValue(fake)', async () => {
    const fake = { runStep: jest.fn(() => StepOutcome.succeed('fake')) };
    const { registry } = await started(builder([RealRunner]).overrideProvider(RealRunner).useValue(fake));
    const binding = registry.runners.get('real')!;
    expect(binding.label).toBe('RealRunner#runStep');
    const runner = await binding.resolve({});
    expect(runner).toBe(fake);
    expect(await runner.runStep(step('r'))).toEqual(StepOutcome.succeed('fake'));
  });

  describe('runsHere', () => {
    it('claims every hosted workflow by default', async () => {
      const { registry } = await started(builder([ARunner, BRunner]));
      expect(registry.claims).toBe('all');
      expect([registry.runsHere('a'), registry.runsHere('b'), registry.runsHere('unknown')]).toEqual([
        true,
        true,
        false,
      ]);
    });

    it('claims only the workflows listed in worker.workflows; the others stay submittable', async () => {
      const { registry } = await started(builder([ARunner, BRunner], { worker: { workflows: ['a'] } }));
      expect([registry.runsHere('a'), registry.runsHere('b')]).toEqual([true, false]);
      expect(registry.submittable.has('b')).toBe(true);
    });

    it('claims nothing with worker: false, and accepts submits to workflows hosted elsewhere', async () => {
      const { registry } = await started(builder([ARunner], { worker: false, workflows: ['remote'] }));
      expect(registry.claims).toBe('none');
      expect([registry.runsHere('a'), registry.runsHere('remote')]).toEqual([false, false]);
      expect([...registry.submittable].sort()).toEqual(['a', 'remote']);
    });

    it('rejects worker.workflows naming a workflow no provider runs, listing the known ones', async () => {
      const err = await thrownBy(() =>
        explore(builder([ARunner, BRunner], { worker: { workflows: ['a', 'missing'] } })),
      );
      expect(err).toBeInstanceOf(WorkflowConfigError);
      expect(err.message).toContain('"missing"');
      expect(err.message).toContain('Known runners: a, b');
    });
  });
});
