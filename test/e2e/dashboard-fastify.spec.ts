/**
 * The dashboard on Fastify: the same controller, so what differs is the platform under
 * it (routing, body parsing, headers). The page loads and lists, a count filters, a run
 * opens, a cancel and a signal go through, the refusals hold.
 */
import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { promisify } from 'node:util';
import { type CanActivate, type ExecutionContext, type INestApplication, Injectable } from '@nestjs/common';
import type { BrowserContext } from 'playwright-core';
import { WorkflowService } from 'nestjs-durable-workflow';
import { dashboardApp, launchChromium, openPage, post, runRowState, waitingRun } from '../utils/dashboard.js';
import { DB_URL, Prefixes } from '../utils/db.js';
import { waitFor } from '../utils/wait.js';

const prefixes = new Prefixes('dashfy');
let chromium: Awaited<ReturnType<typeof launchChromium>>;
let browser: BrowserContext;

beforeAll(async () => {
  chromium = await launchChromium();
  browser = chromium.context;
});
afterAll(async () => {
  await chromium?.close();
  await prefixes.dropAll();
});

describe('dashboard (Fastify)', () => {
  const prefix = prefixes.next();
  let app: INestApplication;
  let service: WorkflowService;
  let url: string;

  beforeAll(async () => {
    app = await dashboardApp({ prefix, platform: 'fastify', dashboard: { allowUnauthenticated: true } });
    service = app.get(WorkflowService);
    url = `${await app.getUrl()}/workflows`;
  });
  afterAll(() => app?.close());

  it('loads the page with its counts and list; a count filters the list', async () => {
    const { runId: done } = await service.submit('dash-echo', { input: 'fastify' });
    await service.waitForOutcome(done, { timeoutMs: 10_000 });
    const waiting = await waitingRun(service, 'on fastify');

    const res = await fetch(url);
    expect(res.headers.get('content-type')).toMatch(/^text\/html/);
    expect(res.headers.get('content-security-policy')).toContain("default-src 'none'");
    expect((await fetch(`${url}/assets/dashboard.js`)).headers.get('content-type')).toMatch(/^text\/javascript/);

    const { page, errors } = await openPage(browser, url);
    const count = (workflow: string, state: string) =>
      page.locator(`#counts button[data-workflow="${workflow}"][data-state="${state}"]`);
    await count('dash-wait', 'waiting').waitFor();
    expect(await count('dash-wait', 'waiting').textContent()).toBe('1');
    expect(await count('dash-echo', 'succeeded').textContent()).toBe('1');
    await page.locator(`#runs tr[data-run-id="${done}"]`).waitFor();

    await count('dash-wait', 'waiting').click();
    await waitFor(
      async () =>
        (await page.locator('#runs tbody tr').evaluateAll((trs) => trs.map((tr: any) => tr.dataset.runId))).join() ===
        waiting,
      'the list to show the waiting run alone',
    );
    expect(errors).toEqual([]);
    await page.close();
  });

  it('opens a run by its id, cancels it with a click, and the database has it cancelled', async () => {
    const runId = await waitingRun(service, { '<script>': '<script>window.__pwned=1</script>' });
    const { page } = await openPage(browser, url);
    await page.getByLabel('Run id').fill(runId);
    await page.getByRole('button', { name: 'Open' }).click();
    await page.locator('#run-payload').waitFor();
    expect(JSON.parse((await page.locator('#run-payload').textContent())!)).toEqual({
      '<script>': '<script>window.__pwned=1</script>',
    });
    expect(await page.evaluate(() => (globalThis as any).__pwned)).toBeUndefined();

    page.once('dialog', (dialog) => void dialog.accept());
    await page.getByRole('button', { name: 'Cancel run' }).click();
    await page.locator('#detail h2 .state', { hasText: 'cancelled' }).waitFor();
    expect(await runRowState(prefix, runId)).toBe('cancelled');
    await page.close();
  });

  it('sends a signal from the page: the run goes on', async () => {
    const runId = await waitingRun(service, 'signal me');
    const { page } = await openPage(browser, `${url}#/runs/${runId}`);
    await page.getByLabel('Data (JSON)').fill('[1, 2, 3]');
    await page.getByRole('button', { name: 'Send signal' }).click();
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome.result).toEqual({ got: [1, 2, 3] });
    await page.close();
  });

  it('refuses forms and cross-site requests', async () => {
    const runId = await waitingRun(service, 'csrf on fastify');
    const cancel = `${url}/api/runs/${runId}/cancel`;
    const json = { 'content-type': 'application/json' };
    // Nest's FastifyAdapter parses forms (@fastify/formbody): the form reaches the guard, which refuses it.
    expect((await post(cancel, { 'content-type': 'application/x-www-form-urlencoded' }, 'x=1')).status).toBe(403);
    expect((await post(cancel, json)).status).toBe(403);
    expect((await post(cancel, { ...json, 'x-workflow-dashboard': '1', origin: 'https://evil.example' })).status).toBe(
      403,
    );
    expect((await post(cancel, { ...json, 'x-workflow-dashboard': '1', 'sec-fetch-site': 'cross-site' })).status).toBe(
      403,
    );
    expect(await runRowState(prefix, runId)).toBe('active');
    expect((await post(cancel, { ...json, 'x-workflow-dashboard': '1' })).status).toBe(200);
    expect(await runRowState(prefix, runId)).toBe('cancelled');
  });
});

describe('dashboard options (Fastify)', () => {
  it('readOnly refuses actions; a guard that refuses answers 403 for the page and the API', async () => {
    @Injectable()
    class NobodyGuard implements CanActivate {
      canActivate(_context: ExecutionContext) {
        return false;
      }
    }
    const prefix = prefixes.next();
    const readOnly = await dashboardApp({
      prefix,
      platform: 'fastify',
      dashboard: { allowUnauthenticated: true, readOnly: true },
    });
    const guarded = await dashboardApp({
      prefix,
      platform: 'fastify',
      dashboard: { guards: [NobodyGuard], path: '/ops' },
    });
    try {
      const runId = await waitingRun(readOnly.get(WorkflowService), 'read only');
      const headers = { 'content-type': 'application/json', 'x-workflow-dashboard': '1' };
      const readOnlyUrl = `${await readOnly.getUrl()}/workflows`;
      expect((await post(`${readOnlyUrl}/api/runs/${runId}/cancel`, headers)).status).toBe(403);
      expect((await fetch(`${readOnlyUrl}/api/runs/${runId}`)).status).toBe(200);

      const guardedUrl = `${await guarded.getUrl()}/ops`;
      for (const target of [guardedUrl, `${guardedUrl}/api/counts`, `${guardedUrl}/api/runs/${runId}`]) {
        expect([target, (await fetch(target)).status]).toEqual([target, 403]);
      }
      expect((await post(`${guardedUrl}/api/runs/${runId}/cancel`, headers)).status).toBe(403);
      expect(await runRowState(prefix, runId)).toBe('active');
    } finally {
      await readOnly.close();
      await guarded.close();
    }
  });
});

describe('dashboard of the built package', () => {
  it('serves its page and files from dist/ on Fastify, with @nestjs/platform-express not installed', async () => {
    const fixtures = resolve(process.cwd(), '.tmp/test/fixtures');
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ['--import', resolve(fixtures, 'hide-peers.js'), resolve(fixtures, 'dashboard-package.js')],
      {
        env: {
          ...process.env,
          WORKFLOW_DB_URL: DB_URL,
          PREFIX: prefixes.next(),
          HIDE_PACKAGES: '@nestjs/platform-express,express',
        },
        timeout: 60_000,
      },
    );
    const report = JSON.parse(stdout.trim().split('\n').pop()!);
    expect(report.express).toBe('absent');
    expect(report.page).toMatchObject({ status: 200, type: 'text/html; charset=utf-8' });
    expect(report.page.body).toMatch(/^<!doctype html>/);
    expect(report.script).toMatchObject({ status: 200, type: 'text/javascript; charset=utf-8' });
    expect(report.style).toMatchObject({ status: 200, type: 'text/css; charset=utf-8' });
    expect(report.counts).toMatchObject({ status: 200 });
    expect(report.counts.body).toMatch(/^\{"counts":\[\{"workflow":"pkg"/);
  });
});
