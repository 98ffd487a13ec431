import { createHook } from 'node:async_hooks';
import { Injectable, Module } from '@nestjs/common';
import { Test, type TestingModule } from '@nestjs/testing';
import { TypeOrmModule, getDataSourceToken } from '@nestjs/typeorm';
import {
  type Step,
  StepOutcome,
  StepRunner,
  UnknownWorkflowError,
  WorkflowConfigError,
  DuplicateWorkflowError,
  InvalidStepRunnerClassError,
  WorkflowModule,
  type WorkflowModuleOptions,
  WorkflowService,
} from 'nestjs-durable-workflow';
import { DataSource } from 'typeorm';
import { startApp, startupError, testBuilder, testOptions } from '../utils/create-test-app.js';
import { DB_URL, Prefixes, rawConnection } from '../utils/db.js';
import { holdsFor, waitFor } from '../utils/wait.js';

// ---------------------------------------------------------------- runners

@Injectable()
@StepRunner('echo')
class EchoRunner {
  static calls = 0;
  calls: Array<{ runId: string; step: number }> = [];
  runStep(step: Step<{ n: number }>) {
    EchoRunner.calls++;
    this.calls.push({ runId: step.runId, step: step.stepNumber });
    if (step.stepNumber === 0) return StepOutcome.continue({ n: step.payload.n + 1 });
    return StepOutcome.succeed({ n: step.payload.n, by: 'echo' });
  }
}

@Injectable()
@StepRunner('a')
class ARunner {
  calls: string[] = [];
  runStep(step: Step) {
    this.calls.push(step.runId);
    return StepOutcome.succeed('a done');
  }
}

@Injectable()
@StepRunner('b')
class BRunner {
  calls: string[] = [];
  runStep(step: Step) {
    this.calls.push(step.runId);
    return StepOutcome.succeed('b done');
  }
}

@Injectable()
@StepRunner('remote')
class RemoteRunner {
  calls: string[] = [];
  runStep(step: Step<string>) {
    this.calls.push(step.runId);
    return StepOutcome.succeed(`remote got ${step.payload}`);
  }
}

@Injectable()
@StepRunner('no-method')
class RunnerWithoutRunStep {
  run() {
    return StepOutcome.succeed(null);
  }
}

@Injectable()
@StepRunner('twice')
class FirstClaimant {
  runStep() {
    return StepOutcome.succeed(1);
  }
}

@Injectable()
@StepRunner('twice')
class SecondClaimant {
  runStep() {
    return StepOutcome.succeed(2);
  }
}

@Injectable()
@StepRunner('real')
class RealRunner {
  static calls = 0;
  runStep() {
    RealRunner.calls++;
    return StepOutcome.succeed('real');
  }
}

abstract class EchoPort {}

// ---------------------------------------------------------------- a ConfigModule-like provider

@Injectable()
class AppConfig {
  static reads: string[] = [];
  private readonly values = new Map<string, string>();
  set(key: string, value: string) {
    this.values.set(key, value);
  }
  get(key: string): string {
    AppConfig.reads.push(key);
    const v = this.values.get(key);
    if (v === undefined) throw new Error(`missing config ${key}`);
    return v;
  }
}

function configModule(values: Record<string, string>) {
  @Module({
    providers: [
      {
        provide: AppConfig,
        useFactory: () => {
          const c = new AppConfig();
          for (const [k, v] of Object.entries(values)) c.set(k, v);
          return c;
        },
      },
    ],
    exports: [AppConfig],
  })
  class FakeConfigModule {}
  return FakeConfigModule;
}

function optionsFrom(config: AppConfig): WorkflowModuleOptions {
  return testOptions({ prefix: config.get('WF_PREFIX'), options: { connection: { url: config.get('WF_DB_URL') } } });
}

/** createWorkflowOptions() factory class for useClass / useExisting. */
@Injectable()
class WorkflowOptionsFactory {
  static created = 0;
  constructor(private readonly config: AppConfig) {
    WorkflowOptionsFactory.created++;
  }
  createWorkflowOptions(): WorkflowModuleOptions {
    return optionsFrom(this.config);
  }
}

// ---------------------------------------------------------------- helpers

async function runsEcho(app: TestingModule, n = 1) {
  const service = app.get(WorkflowService);
  const { runId } = await service.submit('echo', { input: { n } });
  const outcome = await service.waitForOutcome(runId, { timeoutMs: 10_000 });
  expect(outcome).toMatchObject({ runId, status: 'succeeded', result: { n: n + 1, by: 'echo' }, finalStep: 1 });
  return runId;
}

async function runRowCount(prefix: string, runId: string): Promise<number> {
  const conn = await rawConnection();
  try {
    const [rows] = await conn.query(`SELECT COUNT(*) AS n FROM \`${prefix}runs\` WHERE id = ?`, [runId]);
    return Number((rows as Array<{ n: number }>)[0].n);
  } finally {
    await conn.end();
  }
}

const prefixes = new Prefixes('module');
afterAll(() => prefixes.dropAll());

// ---------------------------------------------------------------- forRoot / forRootAsync

describe('WorkflowModule registration', () => {
  it('forRoot with `connection` opens its own pool, migrates, and runs a workflow', async () => {
    const prefix = prefixes.next();
    const app = await startApp({ prefix, providers: [EchoRunner] });
    try {
      const runId = await runsEcho(app, 41);
      expect(await runRowCount(prefix, runId)).toBe(1);
    } finally {
      await app.close();
    }
  });

  it('forRootAsync with imports + inject + useFactory reads the options from an injected config provider', async () => {
    const prefix = prefixes.next();
    AppConfig.reads = [];
    const factoryCalls: unknown[][] = [];
    const factory = (...args: [AppConfig]) => {
      factoryCalls.push(args);
      return optionsFrom(args[0]);
    };
    const app = await Test.createTestingModule({
      imports: [
        WorkflowModule.forRootAsync({
          imports: [configModule({ WF_PREFIX: prefix, WF_DB_URL: DB_URL })],
          inject: [AppConfig],
          useFactory: factory,
        }),
      ],
      providers: [EchoRunner],
    }).compile();
    await app.init();
    try {
      expect(factoryCalls).toHaveLength(1);
      expect(factoryCalls[0][0]).toBeInstanceOf(AppConfig);
      expect(AppConfig.reads).toEqual(expect.arrayContaining(['WF_PREFIX', 'WF_DB_URL']));
      const runId = await runsEcho(app, 1);
      // The prefix came from the config provider: the run is in that prefix's table.
      expect(await runRowCount(prefix, runId)).toBe(1);
    } finally {
      await app.close();
    }
  });

  it('forRootAsync with useClass instantiates the factory class (with its own injections) and calls createWorkflowOptions()', async () => {
    const prefix = prefixes.next();
    WorkflowOptionsFactory.created = 0;
    const app = await Test.createTestingModule({
      imports: [
        WorkflowModule.forRootAsync({
          imports: [configModule({ WF_PREFIX: prefix, WF_DB_URL: DB_URL })],
          useClass: WorkflowOptionsFactory,
        }),
      ],
      providers: [EchoRunner],
    }).compile();
    await app.init();
    try {
      expect(WorkflowOptionsFactory.created).toBe(1);
      const runId = await runsEcho(app, 2);
      expect(await runRowCount(prefix, runId)).toBe(1);
    } finally {
      await app.close();
    }
  });

  it('forRootAsync with useExisting reuses a factory provider exported by an imported module', async () => {
    const prefix = prefixes.next();
    WorkflowOptionsFactory.created = 0;
    const Config = configModule({ WF_PREFIX: prefix, WF_DB_URL: DB_URL });
    @Module({ imports: [Config], providers: [WorkflowOptionsFactory], exports: [WorkflowOptionsFactory] })
    class OptionsModule {}
    const app = await Test.createTestingModule({
      imports: [
        OptionsModule,
        WorkflowModule.forRootAsync({ imports: [OptionsModule], useExisting: WorkflowOptionsFactory }),
      ],
      providers: [EchoRunner],
    }).compile();
    await app.init();
    try {
      // useExisting: the one instance of OptionsModule, not a second one built for WorkflowModule.
      expect(WorkflowOptionsFactory.created).toBe(1);
      const runId = await runsEcho(app, 3);
      expect(await runRowCount(prefix, runId)).toBe(1);
    } finally {
      await app.close();
    }
  });
});

// ---------------------------------------------------------------- shared DataSource

describe('sharing the app’s DataSource', () => {
  it('accepts a TypeORM DataSource object and leaves it initialized after app.close()', async () => {
    const prefix = prefixes.next();
    const dataSource = new DataSource({ type: 'mysql', url: DB_URL } as any);
    await dataSource.initialize();
    try {
      const app = await testBuilder({
        prefix,
        providers: [EchoRunner],
        options: { connection: undefined, dataSource },
      }).compile();
      await app.init();
      await runsEcho(app, 5);
      await app.close();
      // The module did not create it, so it must not have destroyed it.
      expect(dataSource.isInitialized).toBe(true);
      const [row] = await dataSource.query('SELECT 1 AS one');
      expect(Number(row.one)).toBe(1);
    } finally {
      if (dataSource.isInitialized) await dataSource.destroy();
    }
  });

  it('accepts a @nestjs/typeorm DataSource name; the worker drains before TypeORM destroys its own DataSource', async () => {
    const prefix = prefixes.next();
    const app = await Test.createTestingModule({
      imports: [
        TypeOrmModule.forRoot({
          name: 'wf',
          type: 'mysql',
          url: DB_URL,
          entities: [],
          synchronize: false,
          retryAttempts: 0,
        }),
        WorkflowModule.forRoot({ ...testOptions({ prefix }), connection: undefined, dataSource: 'wf' }),
      ],
      providers: [EchoRunner],
    }).compile();
    await app.init();
    const dataSource = app.get<DataSource>(getDataSourceToken('wf'));
    expect(dataSource.isInitialized).toBe(true);
    const runId = await runsEcho(app, 7);
    // It really is the shared DataSource the run went through.
    const [row] = await dataSource.query(`SELECT state FROM \`${prefix}runs\` WHERE id = ?`, [runId]);
    expect(row.state).toBe('succeeded');
    await expect(app.close()).resolves.toBeUndefined();
    // TypeOrmModule owns it and destroys it at shutdown (once, without an error).
    expect(dataSource.isInitialized).toBe(false);
  });
});

// ---------------------------------------------------------------- configuration errors

describe('configuration errors at startup', () => {
  it('both `connection` and `dataSource`', async () => {
    const dataSource = new DataSource({ type: 'mysql', url: DB_URL } as any);
    const err = await startupError(() =>
      testBuilder({ prefix: prefixes.next(), options: { connection: { url: DB_URL }, dataSource } }),
    );
    expect(err).toBeInstanceOf(WorkflowConfigError);
    expect(err.message).toMatch(/connection/);
    expect(err.message).toMatch(/dataSource/);
    expect(err.message).toMatch(/not both/i);
    expect(dataSource.isInitialized).toBe(false);
  });

  it('neither `connection` nor `dataSource`', async () => {
    const err = await startupError(() => testBuilder({ prefix: prefixes.next(), options: { connection: undefined } }));
    expect(err).toBeInstanceOf(WorkflowConfigError);
    expect(err.message).toMatch(/connection/);
    expect(err.message).toMatch(/dataSource/);
  });

  it('an unreachable database names where it tried to connect', async () => {
    const err = await startupError(() =>
      testBuilder({
        prefix: prefixes.next(),
        options: { connection: { host: '127.0.0.1', port: 1, username: 'root' } },
      }),
    );
    expect(err).toBeInstanceOf(WorkflowConfigError);
    expect(err.message).toMatch(/127\.0\.0\.1:1\b/);
    expect(err.message).toMatch(/reach|connect/i);
  });

  it('a @StepRunner class without runStep is named in the error', async () => {
    const err = await startupError(() => testBuilder({ prefix: prefixes.next(), providers: [RunnerWithoutRunStep] }));
    expect(err).toBeInstanceOf(WorkflowConfigError);
    expect(err).toBeInstanceOf(InvalidStepRunnerClassError);
    expect(err.message).toContain('RunnerWithoutRunStep');
    expect(err.message).toContain('runStep');
  });

  it('two classes claiming one @StepRunner name are both named', async () => {
    const err = await startupError(() =>
      testBuilder({ prefix: prefixes.next(), providers: [FirstClaimant, SecondClaimant] }),
    );
    expect(err).toBeInstanceOf(WorkflowConfigError);
    expect(err).toBeInstanceOf(DuplicateWorkflowError);
    expect(err.message).toContain('FirstClaimant');
    expect(err.message).toContain('SecondClaimant');
    expect(err.message).toContain('twice');
  });

  it('an invalid tablePrefix', async () => {
    const err = await startupError(() => testBuilder({ prefix: 'bad-prefix; DROP TABLE x' }));
    expect(err).toBeInstanceOf(WorkflowConfigError);
    expect(err.message).toMatch(/tablePrefix/);
    expect(err.message).toContain('bad-prefix; DROP TABLE x');
  });
});

// ---------------------------------------------------------------- @nestjs/testing behaviour

describe('@nestjs/testing integration', () => {
  it('compile() alone claims nothing; init() starts the worker', async () => {
    const prefix = prefixes.next();
    const compiledOnly = await testBuilder({ prefix, providers: [EchoRunner] }).compile();
    let submitter: TestingModule | undefined;
    try {
      submitter = await startApp({ prefix, worker: false, options: { workflows: ['echo'] } });
      const service = submitter.get(WorkflowService);
      const { runId } = await service.submit('echo', { input: { n: 10 } });
      // The submit committed (another app sees the run) ...
      await waitFor(async () => (await service.status(runId))?.state === 'pending', 'the submitted run to be visible');
      // ... and for several of A's poll intervals (50 ms) nobody takes it.
      const runner = compiledOnly.get(EchoRunner);
      await holdsFor(
        async () => runner.calls.length === 0 && (await service.status(runId))?.state === 'pending',
        500,
        'step 0 stays pending while app A is only compiled',
      );
      expect(await service.status(runId)).toMatchObject({ state: 'pending', currentStep: 0, attempts: 0 });

      await compiledOnly.init();
      const outcome = await service.waitForOutcome(runId, { timeoutMs: 10_000 });
      expect(outcome).toMatchObject({ status: 'succeeded', result: { n: 11, by: 'echo' } });
      expect(runner.calls.filter((c) => c.runId === runId).map((c) => c.step)).toEqual([0, 1]);
    } finally {
      await submitter?.close();
      await compiledOnly.close();
    }
  });

  it('overrideProvider(Runner).useValue(fake) keeps the workflow bound to the fake', async () => {
    const prefix = prefixes.next();
    RealRunner.calls = 0;
    const fakeCalls: Step[] = [];
    const fake = {
      runStep(step: Step) {
        fakeCalls.push(step);
        return StepOutcome.succeed({ fake: true, input: step.payload });
      },
    };
    const app = await testBuilder({ prefix, providers: [RealRunner] })
      .overrideProvider(RealRunner)
      .useValue(fake)
      .compile();
    await app.init();
    try {
      const service = app.get(WorkflowService);
      const { runId } = await service.submit('real', { input: 'x' });
      const outcome = await service.waitForOutcome(runId, { timeoutMs: 10_000 });
      expect(outcome).toMatchObject({ status: 'succeeded', result: { fake: true, input: 'x' } });
      expect(fakeCalls.map((s) => s.runId)).toEqual([runId]);
      expect(RealRunner.calls).toBe(0);
    } finally {
      await app.close();
    }
  });

  it('a useExisting alias of a runner is not registered twice: no error, each step runs once', async () => {
    const prefix = prefixes.next();
    const app = await startApp({
      prefix,
      providers: [
        EchoRunner,
        { provide: 'ECHO_ALIAS', useExisting: EchoRunner },
        { provide: EchoPort, useExisting: EchoRunner },
      ],
    });
    try {
      expect(app.get('ECHO_ALIAS')).toBe(app.get(EchoRunner));
      const runId = await runsEcho(app, 20);
      const runner = app.get(EchoRunner);
      expect(runner.calls.filter((c) => c.runId === runId).map((c) => c.step)).toEqual([0, 1]);
    } finally {
      await app.close();
    }
  });

  it('two apps in one process with different prefixes stay independent', async () => {
    const p1 = prefixes.next();
    const p2 = prefixes.next();
    const app1 = await startApp({ prefix: p1, providers: [EchoRunner, ARunner] });
    const app2 = await startApp({ prefix: p2, providers: [EchoRunner, BRunner] });
    try {
      const s1 = app1.get(WorkflowService);
      const s2 = app2.get(WorkflowService);
      // Registries are per app: each only knows its own runners.
      await expect(s1.submit('b', { input: null })).rejects.toBeInstanceOf(UnknownWorkflowError);
      await expect(s2.submit('a', { input: null })).rejects.toBeInstanceOf(UnknownWorkflowError);

      const r1 = await runsEcho(app1, 100);
      const r2 = await runsEcho(app2, 200);
      const e1 = app1.get(EchoRunner);
      const e2 = app2.get(EchoRunner);
      expect(e1).not.toBe(e2);
      expect(e1.calls.map((c) => c.runId)).toEqual([r1, r1]);
      expect(e2.calls.map((c) => c.runId)).toEqual([r2, r2]);
      // Storage is per prefix: neither sees the other's run.
      expect(await s1.status(r2)).toBeNull();
      expect(await s2.status(r1)).toBeNull();
      // Closing one leaves the other working.
      await app1.close();
      await runsEcho(app2, 300);
    } finally {
      await app1.close();
      await app2.close();
    }
  });
});

// ---------------------------------------------------------------- worker selection

describe('worker: false, worker.workflows and workflows', () => {
  it('worker: false submits but never runs a step', async () => {
    const prefix = prefixes.next();
    const submitter = await startApp({ prefix, worker: false, providers: [EchoRunner] });
    let worker: TestingModule | undefined;
    try {
      const service = submitter.get(WorkflowService);
      const { runId, newlySubmitted } = await service.submit('echo', { input: { n: 1 } });
      expect(newlySubmitted).toBe(true);
      await holdsFor(
        async () => submitter.get(EchoRunner).calls.length === 0 && (await service.status(runId))?.state === 'pending',
        500,
        'the step stays pending in a worker: false app',
      );
      // The step was runnable all along: a worker app on the same tables takes it.
      worker = await startApp({ prefix, providers: [EchoRunner] });
      await expect(service.waitForOutcome(runId, { timeoutMs: 10_000 })).resolves.toMatchObject({
        status: 'succeeded',
      });
      expect(submitter.get(EchoRunner).calls).toHaveLength(0);
      expect(worker.get(EchoRunner).calls.map((c) => c.runId)).toEqual([runId, runId]);
    } finally {
      await worker?.close();
      await submitter.close();
    }
  });

  it("worker.workflows: ['a'] runs only 'a'; a step of 'b' stays pending", async () => {
    const prefix = prefixes.next();
    const app = await startApp({
      prefix,
      providers: [ARunner, BRunner],
      worker: { pollIntervalMs: 50, leaseMs: 5_000, shutdownTimeoutMs: 2_000, workflows: ['a'] },
    });
    try {
      const service = app.get(WorkflowService);
      const b = await service.submit('b', { input: null }); // submitted first: first in line if it were claimable
      const a = await service.submit('a', { input: null });
      await expect(service.waitForOutcome(a.runId, { timeoutMs: 10_000 })).resolves.toMatchObject({
        status: 'succeeded',
        result: 'a done',
      });
      await holdsFor(
        async () => app.get(BRunner).calls.length === 0 && (await service.status(b.runId))?.state === 'pending',
        400,
        "the 'b' step stays pending",
      );
      expect(app.get(ARunner).calls).toEqual([a.runId]);
    } finally {
      await app.close();
    }
  });

  it("workflows: ['remote'] lets a process without the runner submit to it", async () => {
    const prefix = prefixes.next();
    const submitter = await startApp({ prefix, options: { workflows: ['remote'] }, providers: [ARunner] });
    let host: TestingModule | undefined;
    try {
      const service = submitter.get(WorkflowService);
      await expect(service.submit('elsewhere', { input: null })).rejects.toBeInstanceOf(UnknownWorkflowError);
      const { runId, newlySubmitted } = await service.submit('remote', { input: 'hi' });
      expect(newlySubmitted).toBe(true);
      expect(await service.status(runId)).toMatchObject({ workflow: 'remote', state: 'pending' });
      host = await startApp({ prefix, providers: [RemoteRunner] });
      await expect(service.waitForOutcome(runId, { timeoutMs: 10_000 })).resolves.toMatchObject({
        status: 'succeeded',
        result: 'remote got hi',
      });
      expect(host.get(RemoteRunner).calls).toEqual([runId]);
    } finally {
      await host?.close();
      await submitter.close();
    }
  });
});

// ---------------------------------------------------------------- no open handles

describe('app.close()', () => {
  it('releases every socket and timer the app opened (what keeps Jest from exiting)', async () => {
    // Track sockets and timers created from the app's start to its close, as --detectOpenHandles does.
    const live = new Map<number, string>();
    let recording = true;
    const hook = createHook({
      init(id, type) {
        if (recording && (type === 'TCPWRAP' || type === 'Timeout')) {
          live.set(id, `${type} ${new Error().stack?.split('\n').slice(2, 9).join(' | ')}`);
        }
      },
      destroy(id) {
        live.delete(id);
      },
    });
    hook.enable();
    let app: TestingModule | undefined;
    try {
      app = await startApp({ prefix: prefixes.next(), providers: [EchoRunner] });
      await runsEcho(app, 1);
      expect([...live.values()].some((v) => v.startsWith('TCPWRAP'))).toBe(true); // the pool is open while the app runs
      await app.close();
      await app.close(); // a second close is harmless
      app = undefined;
      recording = false; // from here on only the test's own polling timers are created
      await waitFor(() => live.size === 0, 'every socket and timer the app created to be released', 3_000).catch(
        (err) => {
          throw new Error(`${(err as Error).message}; still open: ${JSON.stringify([...live.values()])}`);
        },
      );
    } finally {
      hook.disable();
      await app?.close();
    }
  });
});
