/**
 * The dashboard on Express, used the way a person uses it: Chromium opens the page,
 * clicks counts, searches a run, cancels, signals, retries. What the page shows is
 * checked against the database; what it must refuse is checked with plain HTTP.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type CanActivate, type ExecutionContext, type INestApplication, Injectable, Module } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import type { BrowserContext } from 'playwright-core';
import { WorkflowConfigError, WorkflowDashboardModule, WorkflowModule, WorkflowService } from 'nestjs-durable-workflow';
import { MESSAGES } from '../../lib/workflow.messages.js';
import { startupError, testOptions } from '../utils/create-test-app.js';
import {
  dashboardApp,
  FlakyRunner,
  launchChromium,
  openPage,
  post,
  RUNNERS,
  runRowState,
  waitingRun,
} from '../utils/dashboard.js';
import { Prefixes, rawConnection } from '../utils/db.js';
import { waitFor } from '../utils/wait.js';

const prefixes = new Prefixes('dash');
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

describe('dashboard (Express)', () => {
  const prefix = prefixes.next();
  let app: INestApplication;
  let service: WorkflowService;
  let url: string;

  beforeAll(async () => {
    app = await dashboardApp({ prefix, dashboard: { allowUnauthenticated: true } });
    service = app.get(WorkflowService);
    url = `${await app.getUrl()}/workflows`;
  });
  afterAll(() => app?.close());

  it('shows counts per workflow and state as the database has them; a count filters the list', async () => {
    const echo = await Promise.all([1, 2].map((n) => service.submit('dash-echo', { input: n })));
    for (const { runId } of echo) await service.waitForOutcome(runId, { timeoutMs: 10_000 });
    const waiting = await waitingRun(service, 'hold');
    const { runId: failed } = await service.submit('dash-flaky', { input: null });
    await service.waitForOutcome(failed, { timeoutMs: 10_000 });

    const { page, errors } = await openPage(browser, url);
    const count = (workflow: string, state: string) =>
      page.locator(`#counts button[data-workflow="${workflow}"][data-state="${state}"]`);
    await count('dash-flaky', 'failed').waitFor();

    // Terminal states from the run rows, live ones from the current step's row.
    const conn = await rawConnection();
    const [rows] = await conn.query<any[]>(
      `SELECT r.\`workflow\`, IF(r.\`state\` = 'active', IF(j.\`state\` = 3, 'waiting', 'live'), r.\`state\`) AS s, COUNT(*) AS n
        FROM \`${prefix}runs\` r LEFT JOIN \`${prefix}jobs\` j ON j.\`id\` = r.\`current_job_id\` GROUP BY 1, 2`,
    );
    await conn.end();
    expect(rows.length).toBeGreaterThanOrEqual(3);
    for (const row of rows) expect(await count(row.workflow, row.s).textContent()).toBe(String(row.n));
    expect(await count('dash-echo', 'failed').textContent()).toBe('0');

    await count('dash-flaky', 'failed').click();
    await page.locator(`#runs tr[data-run-id="${failed}"]`).waitFor();
    await waitFor(
      async () => (await page.locator('#runs tbody tr').count()) === 1,
      'the list to show only failed runs',
    );
    expect(await page.locator('#filter-state').inputValue()).toBe('failed');
    expect(await page.locator('#filter-workflow').inputValue()).toBe('dash-flaky');

    // The state filter alone, through its select.
    await page.locator('#filter-clear').click();
    await page.locator('#filter-state').selectOption('waiting');
    await waitFor(
      async () => (await page.locator('#runs tbody tr').allTextContents()).join() === (await rowText(waiting)),
      'the list to show the waiting run alone',
    );
    expect(errors).toEqual([]);
    await page.close();

    async function rowText(runId: string) {
      return page.locator(`#runs tr[data-run-id="${runId}"]`).textContent();
    }
  });

  it('pages through the list with "Load more"', async () => {
    const submitted = await service.submitMany(
      'dash-echo',
      Array.from({ length: 55 }, (_, i) => ({ input: i })),
    );
    await waitFor(
      async () => (await service.listRuns({ workflow: 'dash-echo', state: 'succeeded', limit: 500 })).runs.length >= 57,
      'the echo runs to end',
    );
    const { page } = await openPage(browser, url);
    await page.locator('#filter-workflow').selectOption('dash-echo');
    await waitFor(async () => (await page.locator('#runs tbody tr').count()) === 50, 'the first page of 50');
    await page.getByRole('button', { name: 'Load more' }).click();
    await waitFor(async () => (await page.locator('#runs tbody tr').count()) >= 57, 'the second page');
    expect(await page.locator('#more').isHidden()).toBe(true);
    const ids = await page.locator('#runs tbody tr').evaluateAll((trs) => trs.map((tr: any) => tr.dataset.runId));
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids).toEqual(expect.arrayContaining(submitted.map((s) => s.runId)));
    await page.close();
  });

  it('finds a run by id and shows its status, input, result, headers and history', async () => {
    const { runId } = await service.submit('dash-echo', { input: { question: 42 }, headers: { tenant: 'acme' } });
    await service.waitForOutcome(runId, { timeoutMs: 10_000 });
    const waiting = await waitingRun(service, { draft: 'v1' });

    const { page, errors } = await openPage(browser, url);
    await page.getByLabel('Run id').fill(runId);
    await page.getByRole('button', { name: 'Open' }).click();
    await page.locator('#detail h2', { hasText: runId }).waitFor();
    expect(await page.locator('#detail h2 .state').textContent()).toBe('succeeded');
    expect(JSON.parse((await page.locator('#run-result').textContent())!)).toEqual({ question: 42 });
    expect(await page.locator('#detail').textContent()).toContain('tenant');
    expect(await page.locator('#detail').textContent()).toContain('acme');
    const history = await service.history(runId);
    expect(await page.locator('#history tbody tr').count()).toBe(history.length);
    expect(await page.locator('#history tbody tr').first().textContent()).toContain('succeed');

    // A waiting run: what it waits for and its current payload.
    await page.getByLabel('Run id').fill(waiting);
    await page.getByRole('button', { name: 'Open' }).click();
    await page.locator('#detail h2', { hasText: waiting }).waitFor();
    expect(await page.locator('#detail .fields').textContent()).toContain('signal "go"');
    expect(JSON.parse((await page.locator('#run-payload').textContent())!)).toEqual({ draft: 'v1' });

    // An unknown id says so.
    await page.getByLabel('Run id').fill('no-such-run');
    await page.getByRole('button', { name: 'Open' }).click();
    await page.locator('#detail', { hasText: 'No run no-such-run.' }).waitFor();
    await page.getByRole('link', { name: '← All runs' }).click();
    await page.locator('#overview').waitFor();
    expect(errors.filter((e) => !e.includes('404'))).toEqual([]);
    await page.close();
  });

  it("lists a parent's children as links to their own detail", async () => {
    const { runId } = await service.submit('dash-parent', { input: null });
    await service.waitForOutcome(runId, { timeoutMs: 10_000 });
    const children = (await service.listRuns({ parentRunId: runId })).runs.map((r) => r.runId);
    expect(children).toHaveLength(2);

    const { page } = await openPage(browser, `${url}#/runs/${runId}`);
    await page.locator('#children tbody tr').nth(1).waitFor();
    expect((await page.locator('#children a').allTextContents()).sort()).toEqual([...children].sort());
    await page.locator('#children a', { hasText: children[0] }).click();
    await page.locator('#detail h2', { hasText: children[0] }).waitFor();
    await page.locator('#detail .fields a', { hasText: runId }).click(); // the parent link
    await page.locator('#detail h2', { hasText: runId }).waitFor();
    await page.close();
  });

  it('cancels a waiting run from its detail: the run is cancelled in the database', async () => {
    const runId = await waitingRun(service, 'cancel me');
    const { page, errors } = await openPage(browser, `${url}#/runs/${runId}`);
    page.once('dialog', (dialog) => void dialog.accept());
    await page.getByRole('button', { name: 'Cancel run' }).click();
    await page.locator('#detail h2 .state', { hasText: 'cancelled' }).waitFor();
    expect(await runRowState(prefix, runId)).toBe('cancelled');
    expect(await page.getByRole('button', { name: 'Cancel run' }).count()).toBe(0);
    expect(errors).toEqual([]);
    await page.close();
  });

  it('sends a signal to a waiting run: the run goes on with its data', async () => {
    const runId = await waitingRun(service, 'approve me');
    const { page } = await openPage(browser, `${url}#/runs/${runId}`);
    expect(await page.getByLabel('Name').inputValue()).toBe('go');
    await page.getByLabel('Data (JSON)').fill('{"approved": true}');
    await page.getByRole('button', { name: 'Send signal' }).click();
    await page.locator('#notice', { hasText: 'Signal sent.' }).waitFor();
    const outcome = await service.waitForOutcome(runId, { timeoutMs: 10_000 });
    expect(outcome).toMatchObject({ status: 'succeeded', result: { got: { approved: true } } });
    await page.getByRole('button', { name: 'Refresh' }).click();
    await page.locator('#detail h2 .state', { hasText: 'succeeded' }).waitFor();
    await page.close();
  });

  it("follows a live run's detail by itself, but not while someone types a signal", async () => {
    const runId = await waitingRun(service, 'watch me');
    const { page } = await openPage(browser, `${url}?refresh=1#/runs/${runId}`);
    await page.getByLabel('Data (JSON)').fill('"half-typed"');
    const other = await waitingRun(service, 'other');
    const succeeded = async () => (await service.countRuns()).find((c) => c.workflow === 'dash-wait')!.states.succeeded;
    const before = await succeeded();
    await service.signal(runId, 'go', 'from elsewhere');
    await service.waitForOutcome(runId, { timeoutMs: 10_000 });
    // The counts (redrawn by the same timer) show the run's end: the detail was left as typed.
    await page.waitForFunction(
      (n) =>
        (globalThis as any).document.querySelector('#counts button[data-workflow="dash-wait"][data-state="succeeded"]')
          ?.textContent === n,
      String(before + 1),
    );
    expect(before + 1).toBe(await succeeded());
    expect(await page.getByLabel('Data (JSON)').inputValue()).toBe('"half-typed"');
    expect(await page.locator('#detail h2 .state').textContent()).toBe('waiting');
    // Cleared and left: the next tick shows the run as it is.
    await page.getByLabel('Data (JSON)').fill('');
    await page.getByLabel('Data (JSON)').blur();
    await page.locator('#detail h2 .state', { hasText: 'succeeded' }).waitFor();

    await page.goto(`${url}?refresh=1#/runs/${other}`);
    await page.locator('#detail h2 .state', { hasText: 'waiting' }).waitFor();
    await service.cancel(other);
    await page.locator('#detail h2 .state', { hasText: 'cancelled' }).waitFor();
    await page.close();
  });

  it('retries a dead step from the dead letters: the run resumes and succeeds', async () => {
    const flaky = app.get(FlakyRunner);
    const { runId } = await service.submit('dash-flaky', { input: 'again' });
    await service.waitForOutcome(runId, { timeoutMs: 10_000 });
    const [dead] = (await service.deadSteps({ workflow: 'dash-flaky' })).filter((d) => d.runId === runId);
    flaky.healed = true;

    // The failed run's detail says why, and holds its dead letter.
    const { page } = await openPage(browser, `${url}#/runs/${runId}`);
    expect(await page.locator('#run-error').textContent()).toContain('the upstream said no');
    expect(await page.locator(`#detail tr[data-job-id="${dead.jobId}"]`).count()).toBe(1);
    await page.getByRole('link', { name: '← All runs' }).click();
    const row = page.locator(`#dead tr[data-job-id="${dead.jobId}"]`);
    expect(await row.textContent()).toContain('the upstream said no');
    await row.getByRole('button', { name: 'Retry' }).click();
    await waitFor(async () => (await service.status(runId))?.state === 'succeeded', 'the retried run to succeed');
    await page.locator(`#dead tr[data-job-id="${dead.jobId}"]`).waitFor({ state: 'detached' });
    flaky.healed = false;
    await page.close();
  });

  it('shows run data as text: a <script> in the input does not run', async () => {
    const hostile = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">';
    const runId = await waitingRun(service, { note: hostile });
    await service.submit('dash-echo', { input: hostile, headers: { '<b>bold</b>': hostile } });

    const res = await fetch(url);
    expect(res.headers.get('content-security-policy')).toContain("script-src 'self'");
    expect(await res.text()).not.toContain('<script>window');

    const { page } = await openPage(browser, `${url}#/runs/${runId}`);
    await page.locator('#run-payload').waitFor();
    expect(JSON.parse((await page.locator('#run-payload').textContent())!)).toEqual({ note: hostile });
    await page.locator('#detail').getByRole('link', { name: '← All runs' }).click();
    await page.locator('#runs tbody tr').first().waitFor();
    expect(await page.evaluate(() => (globalThis as any).__pwned)).toBeUndefined();
    expect(await page.locator('#detail script, #detail img, #runs img').count()).toBe(0);
    await page.close();
  });

  it('refuses actions that do not come from its own page, and a cross-site form', async () => {
    const runId = await waitingRun(service, 'csrf target');
    const cancel = `${url}/api/runs/${runId}/cancel`;
    const json = { 'content-type': 'application/json' };

    // A form cannot set the header; a script elsewhere gives itself away by Origin or Sec-Fetch-Site.
    expect((await post(cancel, { 'content-type': 'application/x-www-form-urlencoded' }, 'x=1')).status).toBe(403);
    expect((await post(cancel, { 'content-type': 'text/plain' }, '{}')).status).toBe(403);
    expect((await post(cancel, json)).status).toBe(403);
    expect((await post(cancel, { ...json, 'x-workflow-dashboard': '1', origin: 'https://evil.example' })).status).toBe(
      403,
    );
    expect((await post(cancel, { ...json, 'x-workflow-dashboard': '1', 'sec-fetch-site': 'cross-site' })).status).toBe(
      403,
    );
    expect((await post(cancel, { ...json, 'x-workflow-dashboard': '1', 'sec-fetch-site': 'same-site' })).status).toBe(
      403,
    );
    // GET never acts.
    expect((await fetch(cancel)).status).toBe(404);
    expect(await runRowState(prefix, runId)).toBe('active');

    // A real browser on another origin auto-submitting a form at the dashboard.
    const evil = await evilSite(cancel);
    try {
      const page = await browser.newPage();
      const landed = page.waitForResponse((r) => r.url() === cancel);
      await page.goto(evil.url);
      expect((await landed).status()).toBe(403);
      await page.close();
    } finally {
      await evil.close();
    }
    expect(await runRowState(prefix, runId)).toBe('active');

    // The page's own request: same origin and the header.
    const origin = new URL(url).origin;
    expect(
      (await post(cancel, { ...json, 'x-workflow-dashboard': '1', origin, 'sec-fetch-site': 'same-origin' })).status,
    ).toBe(200);
    expect(await runRowState(prefix, runId)).toBe('cancelled');
  });

  it('answers bad queries with 400 and unknown runs with 404', async () => {
    expect((await fetch(`${url}/api/runs?state=sleeping`)).status).toBe(400);
    expect((await fetch(`${url}/api/runs?limit=501`)).status).toBe(400);
    expect((await fetch(`${url}/api/runs/not%20an%20id`)).status).toBe(400);
    expect((await fetch(`${url}/api/runs/unknown-run`)).status).toBe(404);
    const res = await fetch(`${url}/api/runs?state=failed,waiting&limit=2`);
    expect(res.status).toBe(200);
    expect(res.headers.get('cache-control')).toBe('no-store');
    const body = (await res.json()) as { runs: Array<{ state: string }> };
    expect(body.runs.length).toBeLessThanOrEqual(2);
    for (const run of body.runs) expect(['failed', 'waiting']).toContain(run.state);
  });

  it('draws finished runs per interval in the chart', async () => {
    const { page, errors } = await openPage(browser, `${url}?refresh=1`);
    await page.locator('#counts button').first().waitFor();
    const runs = await service.submitMany('dash-echo', [{ input: 'a' }, { input: 'b' }, { input: 'c' }]);
    for (const { runId } of runs) await service.waitForOutcome(runId, { timeoutMs: 10_000 });
    await page.locator('#chart rect.bar-succeeded').first().waitFor({ timeout: 10_000 });
    expect(await page.locator('#chart-caption').textContent()).toMatch(/\d+ in the last minute/);
    expect(errors).toEqual([]);
    await page.close();
  });

  it('is readable on a phone: nothing scrolls the page sideways at 390 px', async () => {
    const runId = await waitingRun(service, { text: 'x'.repeat(400) }, `phone-${'long-id-'.repeat(10)}`);
    const page = await browser.newPage();
    await page.setViewportSize({ width: 390, height: 844 });
    const sideways = () =>
      page.evaluate(() => {
        const root = (globalThis as any).document.documentElement;
        return root.scrollWidth - root.clientWidth;
      });
    await page.goto(url);
    await page.locator('#runs tbody tr').first().waitFor();
    expect(await sideways()).toBeLessThanOrEqual(0);
    await page.goto(`${url}#/runs/${runId}`);
    await page.locator('#run-payload').waitFor();
    expect(await sideways()).toBeLessThanOrEqual(0);
    await page.close();
  });
});

describe('dashboard options', () => {
  it('readOnly: no actions in the page, and the API refuses them with 403', async () => {
    const prefix = prefixes.next();
    const app = await dashboardApp({ prefix, dashboard: { allowUnauthenticated: true, readOnly: true } });
    try {
      const service = app.get(WorkflowService);
      const url = `${await app.getUrl()}/workflows`;
      const runId = await waitingRun(service, 'read only');
      const { runId: failed } = await service.submit('dash-flaky', { input: null });
      await service.waitForOutcome(failed, { timeoutMs: 10_000 });

      const { page } = await openPage(browser, `${url}#/runs/${runId}`);
      await page.locator('#detail h2', { hasText: runId }).waitFor();
      expect(await page.locator('#read-only').isVisible()).toBe(true);
      expect(await page.getByRole('button', { name: 'Cancel run' }).count()).toBe(0);
      expect(await page.getByRole('button', { name: 'Send signal' }).count()).toBe(0);
      await page.getByRole('link', { name: '← All runs' }).click();
      await page.locator('#dead tbody tr').first().waitFor();
      expect(await page.locator('#dead').getByRole('button', { name: 'Retry' }).count()).toBe(0);
      await page.close();

      const headers = { 'content-type': 'application/json', 'x-workflow-dashboard': '1' };
      const dead = (await service.deadSteps()).find((d) => d.runId === failed)!;
      expect((await post(`${url}/api/runs/${runId}/cancel`, headers)).status).toBe(403);
      expect((await post(`${url}/api/runs/${runId}/signal`, headers, '{"name":"go"}')).status).toBe(403);
      expect((await post(`${url}/api/dead/${dead.jobId}/retry`, headers)).status).toBe(403);
      expect((await service.status(runId))?.state).toBe('waiting');
      expect((await service.status(failed))?.state).toBe('failed');
    } finally {
      await app.close();
    }
  });

  it("runs the app's guards (with their own dependencies) before the page, its files and its API", async () => {
    @Injectable()
    class Tokens {
      valid = (token: unknown) => token === 'Bearer admin';
    }
    @Module({ providers: [Tokens], exports: [Tokens] })
    class AuthModule {}
    @Injectable()
    class AdminGuard implements CanActivate {
      constructor(private readonly tokens: Tokens) {}
      canActivate(context: ExecutionContext) {
        return this.tokens.valid(context.switchToHttp().getRequest().headers.authorization);
      }
    }

    const prefix = prefixes.next();
    const app = await dashboardApp({
      prefix,
      dashboard: { path: 'admin/workflows/', guards: [AdminGuard], imports: [AuthModule] },
    });
    try {
      const url = `${await app.getUrl()}/admin/workflows`;
      const runId = await waitingRun(app.get(WorkflowService), 'guarded');
      const anonymous = [
        url,
        `${url}/assets/dashboard.js`,
        `${url}/api/counts`,
        `${url}/api/runs`,
        `${url}/api/runs/${runId}`,
        `${url}/api/dead`,
      ];
      for (const target of anonymous) expect([target, (await fetch(target)).status]).toEqual([target, 403]);
      const action = `${url}/api/runs/${runId}/cancel`;
      expect((await post(action, { 'content-type': 'application/json', 'x-workflow-dashboard': '1' })).status).toBe(
        403,
      );
      expect(await runRowState(prefix, runId)).toBe('active');

      // With the token, in a browser that sends it on every request.
      const page = await browser.newPage();
      await page.setExtraHTTPHeaders({ authorization: 'Bearer admin' });
      await page.goto(url);
      await page.locator(`#runs tr[data-run-id="${runId}"]`).waitFor();
      await page.close();
    } finally {
      await app.close();
    }
  });

  it('two dashboards in one app keep their own path, guards and readOnly', async () => {
    @Injectable()
    class Nobody implements CanActivate {
      canActivate() {
        return false;
      }
    }
    const moduleRef = await Test.createTestingModule({
      imports: [
        WorkflowModule.forRoot(testOptions({ prefix: prefixes.next() })),
        WorkflowDashboardModule.forRoot({ path: '/look', allowUnauthenticated: true, readOnly: true }),
        WorkflowDashboardModule.forRoot({ path: '/act', allowUnauthenticated: true }),
        WorkflowDashboardModule.forRoot({ path: '/closed', guards: [Nobody] }),
      ],
      providers: RUNNERS,
    }).compile();
    const app = moduleRef.createNestApplication({ logger: false, forceCloseConnections: true });
    await app.listen(0, '127.0.0.1');
    try {
      const base = await app.getUrl();
      const runId = await waitingRun(app.get(WorkflowService), 'two dashboards');
      const headers = { 'content-type': 'application/json', 'x-workflow-dashboard': '1' };
      expect((await fetch(`${base}/closed/api/runs/${runId}`)).status).toBe(403);
      expect((await fetch(`${base}/look/api/runs/${runId}`)).status).toBe(200);
      expect((await post(`${base}/look/api/runs/${runId}/cancel`, headers)).status).toBe(403);
      expect((await post(`${base}/act/api/runs/${runId}/cancel`, headers)).status).toBe(200);
      expect((await app.get(WorkflowService).status(runId))?.state).toBe('cancelled');
    } finally {
      await app.close();
    }
  });

  it('serves under a global prefix and with a trailing slash', async () => {
    const app = await dashboardApp({
      prefix: prefixes.next(),
      dashboard: { allowUnauthenticated: true, path: '/ops/runs' },
      globalPrefix: 'api',
    });
    try {
      const runId = await waitingRun(app.get(WorkflowService), 'prefixed');
      for (const url of [`${await app.getUrl()}/api/ops/runs`, `${await app.getUrl()}/api/ops/runs/`]) {
        const { page, errors } = await openPage(browser, url);
        await page.locator(`#runs tr[data-run-id="${runId}"]`).waitFor();
        expect(errors).toEqual([]);
        await page.close();
      }
    } finally {
      await app.close();
    }
  });

  it('does not start without guards or allowUnauthenticated (WorkflowConfigError), nor with a bad path', async () => {
    const build = (dashboard: Parameters<typeof WorkflowDashboardModule.forRoot>[0]) => () =>
      Test.createTestingModule({
        imports: [
          WorkflowModule.forRoot(testOptions({ prefix: prefixes.next(), worker: false })),
          WorkflowDashboardModule.forRoot(dashboard),
        ],
        providers: RUNNERS,
      });
    for (const options of [{}, { guards: [] }, { allowUnauthenticated: false }, { readOnly: true }]) {
      const err = await startupError(build(options));
      expect(err).toBeInstanceOf(WorkflowConfigError);
      expect(err.message).toBe(MESSAGES.dashboardUnguarded('/workflows'));
    }
    const bad = await startupError(build({ allowUnauthenticated: true, path: '/runs/:id' }));
    expect(bad).toBeInstanceOf(WorkflowConfigError);
    expect(bad.message).toBe(MESSAGES.dashboardPath('/runs/:id'));
  });
});

/** Another origin whose page posts a form at `target` as soon as it loads. */
async function evilSite(target: string): Promise<{ url: string; close(): Promise<void> }> {
  const server: Server = createServer((_req, res) => {
    res.setHeader('content-type', 'text/html');
    res.end(
      `<form method="post" action="${target}"><input name="x" value="1"></form>` +
        '<script>document.forms[0].submit()</script>',
    );
  });
  await new Promise<void>((resolve) => server.listen(0, 'localhost', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://localhost:${port}/`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections(); // the browser keeps its connection alive
      }),
  };
}
