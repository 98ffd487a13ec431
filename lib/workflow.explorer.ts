import { Inject, Injectable, Logger, type OnModuleInit } from '@nestjs/common';
import { ContextIdFactory, DiscoveryService, MetadataScanner, ModuleRef } from '@nestjs/core';
import type { InstanceWrapper } from '@nestjs/core/injector/instance-wrapper.js';
import { DuplicateWorkflowError } from './errors/duplicate-workflow.error.js';
import { InvalidStepRunnerClassError } from './errors/invalid-step-runner-class.error.js';
import { WorkflowConfigError } from './errors/workflow-config.error.js';
import { MESSAGES } from './workflow.messages.js';
import type { StepRunner, StepRunnerOptions } from './interfaces/step-runner.interface.js';
import type { FlowLimits } from './storage/flow.js';
import type { RunOutcome } from './interfaces/run.interface.js';
import { assertWorkflowName, backoff, int, type ResolvedWorkflowConfig } from './workflow.config.js';
import { LIMITS, WORKFLOW_CONFIG } from './workflow.constants.js';
import { WorkflowMetadataAccessor } from './workflow-metadata.accessor.js';
import { WorkflowRegistry } from './workflow.registry.js';
import { terminalQueue } from './storage/storage.types.js';

type Class = abstract new (...args: any[]) => any;

/**
 * Finds @StepRunner classes and @OnTerminal methods among the app's providers at
 * onModuleInit and fills the registry. Does no I/O and starts nothing.
 */
@Injectable()
export class WorkflowExplorer implements OnModuleInit {
  private readonly logger = new Logger(WorkflowExplorer.name);

  constructor(
    private readonly discovery: DiscoveryService,
    private readonly scanner: MetadataScanner,
    private readonly accessor: WorkflowMetadataAccessor,
    private readonly registry: WorkflowRegistry,
    private readonly moduleRef: ModuleRef,
    @Inject(WORKFLOW_CONFIG) private readonly config: ResolvedWorkflowConfig,
  ) {}

  onModuleInit(): void {
    this.explore();
  }

  explore(): void {
    const registry = this.registry;
    if (registry.runners.size || registry.handlers.size) return;
    registry.maxAttempts = this.config.defaults.maxAttempts;
    const worker = this.config.worker;
    registry.claims = !worker ? 'none' : worker.workflows ? new Set(worker.workflows) : 'all';
    const owners = new Map<string, { cls: Class; wrapper: InstanceWrapper }>();
    const seenHosts = new Set<unknown>();

    for (const wrapper of this.discovery.getProviders()) {
      if (wrapper.isAlias) continue; // useExisting: the real provider is listed too
      const cls = this.classOf(wrapper);
      if (!cls) continue;
      const host = wrapper.isDependencyTreeStatic() ? wrapper.instance : wrapper;
      if (!host || seenHosts.has(host)) continue;
      seenHosts.add(host);

      const meta = this.accessor.getStepRunner(cls);
      if (meta) this.addRunner(cls, meta.name, meta.options, wrapper, owners);
      this.addHandlers(cls, wrapper);
    }

    for (const name of this.config.workflows) registry.submittable.add(name);
    const hosted = this.config.worker ? this.config.worker.workflows : [];
    if (hosted) {
      for (const name of hosted) {
        if (!registry.runners.has(name)) {
          throw new WorkflowConfigError(MESSAGES.unknownWorkerWorkflow(name, [...registry.runners.keys()]));
        }
      }
    }
    for (const [name, runner] of registry.runners) {
      this.logger.log(
        `Workflow "${name}" → ${runner.label}: ${registry.runsHere(name) ? 'runs in this process' : 'submit only here'}`,
      );
    }
    for (const name of this.config.workflows) {
      if (!registry.runners.has(name))
        this.logger.log(`Workflow "${name}": submit only here (runner in another process)`);
    }
    for (const h of registry.handlers.values()) {
      this.logger.log(
        `Terminal handler ${h.label} for ${h.workflows ? [...h.workflows].join(', ') : 'every workflow'}`,
      );
    }
  }

  /**
   * The decorated class behind a provider: the token when it is a class carrying our
   * metadata (so overrideProvider(Runner).useValue(fake) stays bound), else the class
   * of a useClass provider, else the constructor of a value/factory instance.
   */
  private classOf(wrapper: InstanceWrapper): Class | undefined {
    const candidates: unknown[] = [
      wrapper.token,
      wrapper.inject ? undefined : wrapper.metatype,
      wrapper.instance?.constructor,
    ];
    for (const c of candidates) {
      if (typeof c === 'function' && c !== Object && (this.accessor.getStepRunner(c) || this.hasHandlers(c as Class))) {
        return c as Class;
      }
    }
    return undefined;
  }

  private hasHandlers(cls: Class): boolean {
    const proto = cls.prototype;
    return !!proto && this.scanner.getAllMethodNames(proto).some((m) => this.accessor.getOnTerminal(proto[m]));
  }

  private addRunner(
    cls: Class,
    name: string,
    options: Record<string, any>,
    wrapper: InstanceWrapper,
    owners: Map<string, { cls: Class; wrapper: InstanceWrapper }>,
  ): void {
    assertWorkflowName(name, `@StepRunner on ${cls.name}`);
    const previous = owners.get(name);
    if (previous) {
      if (previous.cls === cls) {
        this.logger.warn(
          `${cls.name} is provided in more than one module; workflow "${name}" uses the first instance.`,
        );
        return;
      }
      throw new DuplicateWorkflowError(MESSAGES.duplicateWorkflow(name, previous.cls.name, cls.name));
    }
    const target = wrapper.isDependencyTreeStatic() ? wrapper.instance : cls.prototype;
    if (typeof target?.runStep !== 'function') {
      throw new InvalidStepRunnerClassError(MESSAGES.missingRunStep(cls.name, name));
    }
    owners.set(name, { cls, wrapper });
    const where = `@StepRunner('${name}') on ${cls.name}`;
    const d = this.config.defaults;
    this.registry.runners.set(name, {
      name,
      label: `${cls.name}#runStep`,
      maxAttempts: int(options.maxAttempts, d.maxAttempts, `${where}: maxAttempts`, 1, LIMITS.maxAttempts),
      backoff: backoff(options.backoff, `${where}: backoff`, d.backoff),
      priority: int(options.priority, d.priority, `${where}: priority`, LIMITS.minPriority, LIMITS.maxPriority),
      concurrency: int(
        options.concurrency,
        this.config.worker ? this.config.worker.concurrency : 1,
        `${where}: concurrency`,
        1,
        LIMITS.maxConcurrency,
      ),
      timeoutMs:
        options.timeoutMs === undefined
          ? undefined
          : int(options.timeoutMs, 0, `${where}: timeoutMs`, 1, LIMITS.maxTimerMs),
      limits: flowLimits(options, where),
      resolve: this.resolver<StepRunner>(wrapper),
    });
    this.registry.submittable.add(name);
  }

  private addHandlers(cls: Class, wrapper: InstanceWrapper): void {
    const proto = cls.prototype;
    if (!proto) return;
    for (const method of this.scanner.getAllMethodNames(proto)) {
      const meta = this.accessor.getOnTerminal(proto[method]);
      if (!meta) continue;
      meta.workflows?.forEach((w) => assertWorkflowName(w, `@OnTerminal on ${cls.name}#${method}`));
      const label = `${cls.name}#${method}`;
      const resolve = this.resolver<Record<string, (o: RunOutcome) => unknown>>(wrapper);
      let queue = terminalQueue(label);
      for (let i = 2; this.registry.handlers.has(queue); i++) queue = terminalQueue(`${label}:${i}`);
      this.registry.handlers.set(queue, {
        queue,
        label,
        workflows: meta.workflows ? new Set(meta.workflows) : undefined,
        invoke: async (outcome) => {
          const host = await resolve(outcome);
          await host[method](outcome);
        },
      });
    }
  }

  /**
   * Static providers resolve to their one instance. Request-scoped (or depending on
   * one) are built per step or delivery through public APIs, with the step registered
   * as the "request" so durable ContextIdStrategies apply.
   */
  private resolver<T>(wrapper: InstanceWrapper): (request: object) => Promise<T> {
    if (wrapper.isDependencyTreeStatic() && !wrapper.isTransient) {
      const instance = wrapper.instance as T;
      return async () => instance;
    }
    return async (request) => {
      const contextId = ContextIdFactory.getByRequest(request);
      this.moduleRef.registerRequestByContextId(request, contextId);
      return this.moduleRef.resolve(wrapper.token as any, contextId, { strict: false });
    };
  }
}

/** keyConcurrency and rateLimit checked, or undefined when the runner declares neither (its claims then pay nothing). */
function flowLimits(options: StepRunnerOptions, where: string): FlowLimits | undefined {
  const { keyConcurrency, rateLimit } = options;
  if (keyConcurrency === undefined && rateLimit === undefined) return undefined;
  const limits: FlowLimits = {};
  if (keyConcurrency !== undefined)
    limits.keyConcurrency = int(keyConcurrency, 0, `${where}: keyConcurrency`, 1, LIMITS.maxConcurrency);
  if (rateLimit !== undefined) {
    if (!rateLimit || typeof rateLimit !== 'object')
      throw new WorkflowConfigError(`${where}: rateLimit must be { limit, periodMs, perKey? }.`);
    if (rateLimit.perKey !== undefined && typeof rateLimit.perKey !== 'boolean')
      throw new WorkflowConfigError(`${where}: rateLimit.perKey must be a boolean.`);
    for (const field of ['limit', 'periodMs'] as const)
      if (rateLimit[field] === undefined) throw new WorkflowConfigError(`${where}: rateLimit.${field} is required.`);
    limits.rate = {
      limit: int(rateLimit.limit, 0, `${where}: rateLimit.limit`, 1, LIMITS.maxRateLimit),
      periodMs: int(rateLimit.periodMs, 0, `${where}: rateLimit.periodMs`, 1, LIMITS.maxRatePeriodMs),
      perKey: rateLimit.perKey === true,
    };
  }
  return limits;
}
