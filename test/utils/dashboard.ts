/**
 * What the dashboard specs share: an HTTP app (Express or Fastify) with WorkflowModule,
 * WorkflowDashboardModule and a few runners, and Debian's Chromium driven by
 * playwright-core (never a downloaded browser: the network is closed).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type INestApplication, Injectable } from '@nestjs/common';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import { Test } from '@nestjs/testing';
import { type BrowserContext, chromium, type Page } from 'playwright-core';
import {
  type Step,
  StepError,
  StepOutcome,
  StepRunner,
  WorkflowDashboardModule,
  type WorkflowDashboardOptions,
  WorkflowModule,
  WorkflowService,
} from 'nestjs-durable-workflow';
import { testOptions } from './create-test-app.js';
import { rawConnection } from './db.js';
import { waitFor } from './wait.js';

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

@Injectable()
@StepRunner('dash-echo')
export class EchoRunner {
  runStep(step: Step<unknown>) {
    return StepOutcome.succeed(step.payload);
  }
}

/** Waits for the signal `go`, then succeeds with its data. */
@Injectable()
@StepRunner('dash-wait')
export class WaitRunner {
  runStep(step: Step<unknown>) {
    if (step.stepNumber === 0) return StepOutcome.waitForSignal('go', step.payload);
    return StepOutcome.succeed({ got: step.received && !step.received.timedOut ? step.received.data : null });
  }
}

/** Fails permanently (a dead letter) until `healed`: what a fix deployed before a retry looks like. */
@Injectable()
@StepRunner('dash-flaky')
export class FlakyRunner {
  healed = false;
  runStep() {
    if (!this.healed) throw StepError.permanent('the upstream said no');
    return StepOutcome.succeed('healed');
  }
}

/** Spawns two echo children, then succeeds with how many ended. */
@Injectable()
@StepRunner('dash-parent')
export class ParentRunner {
  runStep(step: Step<unknown>) {
    if (step.stepNumber === 0) {
      return StepOutcome.spawn(
        [
          { workflow: 'dash-echo', input: 'first' },
          { workflow: 'dash-echo', input: 'second' },
        ],
        null,
      );
    }
    return StepOutcome.succeed(step.children!.length);
  }
}

export const RUNNERS = [EchoRunner, WaitRunner, FlakyRunner, ParentRunner];

export interface DashboardAppOptions {
  prefix: string;
  dashboard: WorkflowDashboardOptions;
  platform?: 'express' | 'fastify';
  /** Modules beside the two (an auth module the guards use). */
  imports?: any[];
  globalPrefix?: string;
}

/** A listening app on a free port of 127.0.0.1. */
export async function dashboardApp(o: DashboardAppOptions): Promise<INestApplication> {
  const moduleRef = await Test.createTestingModule({
    imports: [WorkflowModule.forRoot(testOptions({ prefix: o.prefix })), WorkflowDashboardModule.forRoot(o.dashboard)],
    providers: RUNNERS,
  }).compile();
  // Chromium keeps preconnected sockets open with no request on them: without this, close() waits for them.
  const options = { logger: false as const, forceCloseConnections: true };
  const app =
    o.platform === 'fastify'
      ? moduleRef.createNestApplication(new FastifyAdapter(), options)
      : moduleRef.createNestApplication(options);
  if (o.globalPrefix) app.setGlobalPrefix(o.globalPrefix);
  await app.listen(0, '127.0.0.1');
  return app;
}

/** Chromium once per spec file, with a fresh profile, headless, nothing fetched from the network. */
export async function launchChromium(): Promise<{ context: BrowserContext; close(): Promise<void> }> {
  const profile = await mkdtemp(join(tmpdir(), 'dashboard-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--no-first-run',
    ],
    viewport: { width: 1280, height: 900 },
  });
  return {
    context,
    async close() {
      await context.close();
      await rm(profile, { recursive: true, force: true });
    },
  };
}

/** A new tab on `url` whose script errors fail the test that reads them. */
export async function openPage(context: BrowserContext, url: string): Promise<{ page: Page; errors: string[] }> {
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (err) => errors.push(err.message));
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(msg.text());
  });
  await page.goto(url);
  return { page, errors };
}

/** The run's row state straight from the table, as the database has it. */
export async function runRowState(prefix: string, runId: string): Promise<string | undefined> {
  const conn = await rawConnection();
  try {
    const [rows] = await conn.query<any[]>(`SELECT \`state\` FROM \`${prefix}runs\` WHERE \`id\` = ?`, [runId]);
    return rows[0]?.state;
  } finally {
    await conn.end();
  }
}

/** Resolves once the run is parked on its signal. */
export async function waitingRun(service: WorkflowService, input: unknown, runId?: string): Promise<string> {
  const { runId: id } = await service.submit('dash-wait', { input, runId });
  await waitFor(async () => (await service.status(id))?.state === 'waiting', `run ${id} to wait`);
  return id;
}

/** POSTs an action the way a script would, with the headers given and nothing else. */
export async function post(url: string, headers: Record<string, string>, body = '{}'): Promise<{ status: number }> {
  const res = await fetch(url, { method: 'POST', headers, body, signal: AbortSignal.timeout(10_000) });
  await res.arrayBuffer();
  return { status: res.status };
}
