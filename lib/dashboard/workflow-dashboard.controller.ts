import {
  applyDecorators,
  BadRequestException,
  Body,
  type CanActivate,
  Controller,
  Get,
  Header,
  HttpCode,
  Inject,
  Logger,
  NotFoundException,
  type OnModuleInit,
  Param,
  Post,
  Query,
  Req,
  type Type,
  UseGuards,
} from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import { WorkflowError } from '../errors/workflow.error.js';
import type { RunState } from '../interfaces/run.interface.js';
import { WorkflowStorage } from '../storage/workflow.storage.js';
import { RUN_STATES, TERMINAL_STATES } from '../run-views.js';
import { parseJson } from '../utils/json.js';
import { WorkflowService } from '../workflow.service.js';
import { DashboardActionGuard } from './dashboard-action.guard.js';
import { DASHBOARD_ASSETS, type DashboardAssets, renderPage } from './dashboard.assets.js';
import { DASHBOARD_OPTIONS, PAGE_CSP } from './workflow-dashboard.constants.js';
import type { ResolvedDashboardConfig } from './workflow-dashboard.config.js';

const STATES: ReadonlySet<string> = new Set(RUN_STATES);
/** Children shown in a run's detail; the rest through the list filtered by parent. */
const CHILDREN_SHOWN = 100;
/** A run's dead letters shown in its detail (one per failed step or handler, so few). */
const DEAD_SHOWN = 100;

/** Run data is never cached by a browser or a proxy, nor sniffed into something else. */
const Private = () => applyDecorators(Header('Cache-Control', 'no-store'), Header('X-Content-Type-Options', 'nosniff'));

const Action = (route: string) =>
  applyDecorators(Post(route), HttpCode(200), UseGuards(DashboardActionGuard), Private());

/**
 * One controller class per forRoot(), so its `path` and `guards` are its own: two
 * dashboards in one app do not share routes. Only Nest's decorators touch the request,
 * so it serves the same on Express and Fastify.
 */
export function createDashboardController(path: string, guards: Type<CanActivate>[]): Type<unknown> {
  @Controller(path)
  @UseGuards(...guards)
  class WorkflowDashboardController implements OnModuleInit {
    private readonly logger = new Logger(WorkflowDashboardController.name);

    constructor(
      private readonly workflows: WorkflowService,
      private readonly storage: WorkflowStorage,
      private readonly adapterHost: HttpAdapterHost,
      @Inject(DASHBOARD_OPTIONS) private readonly config: ResolvedDashboardConfig,
      @Inject(DASHBOARD_ASSETS) private readonly assets: DashboardAssets,
    ) {}

    onModuleInit(): void {
      const mode = this.config.readOnly ? 'read-only' : 'with actions';
      if (guards.length) {
        this.logger.log(`Dashboard at ${path} (${mode}), guarded by ${guards.map((g) => g.name).join(', ')}.`);
      } else {
        this.logger.warn(`Dashboard at ${path} (${mode}) WITHOUT authentication (allowUnauthenticated: true).`);
      }
    }

    @Get()
    @Header('Content-Type', 'text/html; charset=utf-8')
    @Header('Content-Security-Policy', PAGE_CSP)
    @Header('Referrer-Policy', 'no-referrer')
    @Private()
    page(@Req() request: unknown): string {
      const url = this.adapterHost.httpAdapter.getRequestUrl(request) ?? path;
      return renderPage(this.assets, url, this.config.readOnly);
    }

    // Revalidated, not cached for good: an upgrade of the package changes them under the same name.
    @Get('assets/dashboard.js')
    @Header('Content-Type', 'text/javascript; charset=utf-8')
    @Header('Cache-Control', 'no-cache')
    @Header('X-Content-Type-Options', 'nosniff')
    script(): string {
      return this.assets.js;
    }

    @Get('assets/dashboard.css')
    @Header('Content-Type', 'text/css; charset=utf-8')
    @Header('Cache-Control', 'no-cache')
    @Header('X-Content-Type-Options', 'nosniff')
    style(): string {
      return this.assets.css;
    }

    @Get('api/counts')
    @Private()
    async counts() {
      return { counts: await this.workflows.countRuns(), readOnly: this.config.readOnly, at: new Date() };
    }

    @Get('api/runs')
    @Private()
    async runs(@Query() query: Record<string, unknown>) {
      const filter = {
        workflow: text(query.workflow, 'workflow'),
        state: states(query.state),
        parentRunId: text(query.parentRunId, 'parentRunId'),
        concurrencyKey: text(query.concurrencyKey, 'concurrencyKey'),
        cursor: text(query.cursor, 'cursor'),
        limit: integer(query.limit, 'limit', 1, 500),
      };
      return badRequestOn(() => this.workflows.listRuns(filter));
    }

    @Get('api/runs/:runId')
    @Private()
    async run(@Param('runId') runId: string) {
      const run = await badRequestOn(() => this.workflows.status(runId));
      if (!run) throw new NotFoundException(`No run ${runId}.`);
      const [payload, history, children, deadSteps] = await Promise.all([
        this.storage.currentPayload(runId),
        this.workflows.history(runId),
        this.workflows.listRuns({ parentRunId: runId, limit: CHILDREN_SHOWN }),
        TERMINAL_STATES.has(run.state) ? this.workflows.deadSteps({ runId, limit: DEAD_SHOWN }) : [],
      ]);
      return {
        run,
        // Absent once the run has ended: its step row is gone, the result or error tells the rest.
        current: payload === null ? null : { payload: parseJson(payload) },
        history,
        children: children.runs,
        moreChildren: children.nextCursor !== undefined,
        deadSteps,
      };
    }

    @Get('api/dead')
    @Private()
    async dead(@Query() query: Record<string, unknown>) {
      const filter = {
        workflow: text(query.workflow, 'workflow'),
        limit: integer(query.limit, 'limit', 1, 500) ?? 100,
      };
      return { deadSteps: await badRequestOn(() => this.workflows.deadSteps(filter)) };
    }

    @Action('api/runs/:runId/cancel')
    async cancel(@Param('runId') runId: string) {
      return { cancelled: await badRequestOn(() => this.workflows.cancel(runId)) };
    }

    @Action('api/runs/:runId/signal')
    async signal(@Param('runId') runId: string, @Body() body: unknown) {
      const { name, data } = (body ?? {}) as { name?: unknown; data?: unknown };
      if (typeof name !== 'string') throw new BadRequestException('A signal needs a `name`.');
      return { sent: await badRequestOn(() => this.workflows.signal(runId, name, data)) };
    }

    @Action('api/dead/:jobId/retry')
    async retry(@Param('jobId') jobId: string) {
      return { retried: await this.workflows.retryDead(jobId) };
    }
  }
  return WorkflowDashboardController;
}

/** The library's refusals of a caller's input (a bad id, name, cursor) are the client's mistake: 400. */
async function badRequestOn<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (err) {
    if (err instanceof WorkflowError) throw new BadRequestException(err.message);
    throw err;
  }
}

function text(value: unknown, name: string): string | undefined {
  if (value === undefined || value === '') return undefined;
  if (typeof value !== 'string') throw new BadRequestException(`\`${name}\` must be given once, as text.`);
  return value;
}

function integer(value: unknown, name: string, min: number, max: number): number | undefined {
  const s = text(value, name);
  if (s === undefined) return undefined;
  const n = Number(s);
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    throw new BadRequestException(`\`${name}\` must be an integer from ${min} to ${max}.`);
  }
  return n;
}

/** `state=failed` or `state=pending,running`. */
function states(value: unknown): RunState[] | undefined {
  const s = text(value, 'state');
  if (s === undefined) return undefined;
  const list = s.split(',') as RunState[];
  const unknown = list.find((x) => !STATES.has(x));
  if (unknown !== undefined) {
    throw new BadRequestException(`Unknown state "${unknown}"; one of ${[...STATES].join(', ')}.`);
  }
  return list;
}
