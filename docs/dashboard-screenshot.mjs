// Takes the README's dashboard screenshots: the sample's research agent under a few
// minutes' worth of traffic (some runs fail, some wait for approval, some fan out),
// shown in Debian's Chromium. `npm run docs:screenshot`; needs the database the tests use.
/* global process, console, setTimeout, URL */
import 'reflect-metadata';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Test } from '@nestjs/testing';
import mysql from 'mysql2/promise';
import { chromium } from 'playwright-core';

process.env.FAKE_MODEL_LATENCY_MS ??= '150';
const { WorkflowDashboardModule, WorkflowModule, WorkflowService, WORKFLOW_TABLES } = await import(
  'nestjs-durable-workflow'
);
const { FakeModelClient } = await import('../sample-dist/sample/fake-model.client.js');
const { ResearchAgentRunner } = await import('../sample-dist/sample/research-agent.runner.js');
const { SourceReaderRunner } = await import('../sample-dist/sample/source-reader.runner.js');

const url = process.env.WORKFLOW_DB_URL ?? 'mysql://root@127.0.0.1:3306/test';
const prefix = 'screenshot_';
const out = new URL('./', import.meta.url);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function dropTables() {
  const conn = await mysql.createConnection(url);
  for (const t of WORKFLOW_TABLES) await conn.query(`DROP TABLE IF EXISTS \`${prefix}${t}\``);
  await conn.end();
}

await dropTables();
const moduleRef = await Test.createTestingModule({
  imports: [
    WorkflowModule.forRoot({ connection: { url }, tablePrefix: prefix, worker: { concurrency: 8, pollIntervalMs: 50 } }),
    WorkflowDashboardModule.forRoot({ allowUnauthenticated: true }),
  ],
  providers: [FakeModelClient, ResearchAgentRunner, SourceReaderRunner],
}).compile();
const app = moduleRef.createNestApplication({ logger: ['error'], forceCloseConnections: true });
await app.listen(0, '127.0.0.1');
const service = app.get(WorkflowService);
const dashboard = `${await app.getUrl()}/workflows`;

const profile = await mkdtemp(join(tmpdir(), 'dashboard-shot-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
  viewport: { width: 1280, height: 1020 },
  deviceScaleFactor: 1,
});
try {
  const page = await browser.newPage();
  await page.goto(`${dashboard}?refresh=2`);

  const topics = ['tidal energy', 'sourdough', 'the printing press', 'honeybees', 'RISC-V', 'glaciers', 'jazz'];
  const approvals = [];
  let n = 0;
  // A varying load over about 50 s: 25 bars of 2 s on the chart.
  for (let wave = 0; wave < 25; wave++) {
    const size = 2 + ((wave * 7) % 5);
    for (let i = 0; i < size; i++, n++) {
      const topic = n % 9 === 4 ? '' : topics[n % topics.length];
      const input = { topic };
      if (n % 5 === 1) input.approval = true;
      if (n % 6 === 2) input.sources = ['encyclopedia', 'news', 'papers'];
      const { runId } = await service.submit('research-agent', { input, headers: { tenant: `team-${n % 3}` } });
      if (input.approval) approvals.push(runId);
    }
    // Most drafts get approved a little later; one is rejected; the newest still wait.
    while (approvals.length > 3) {
      const runId = approvals.shift();
      const status = await service.status(runId);
      if (status?.state === 'waiting') {
        await service.signal(runId, 'approval', n % 4 === 0 ? { approved: false, note: 'too long' } : { approved: true });
      } else approvals.push(runId);
      if (status?.state !== 'waiting') break;
    }
    await sleep(2000);
  }
  await sleep(2500);
  await page.screenshot({ path: new URL('dashboard.png', out).pathname });

  // A run that fanned out and waited for approval, opened from the list.
  const { runs } = await service.listRuns({ workflow: 'research-agent', state: 'succeeded', limit: 500 });
  let shown = runs[0];
  for (const run of runs) {
    const history = await service.history(run.runId);
    if (history.some((h) => h.outcome === 'spawn') && history.some((h) => h.outcome === 'wait')) shown = run;
  }
  await page.goto(`${dashboard}?refresh=2#/runs/${shown.runId}`);
  await page.locator('#history').waitFor();
  await page.screenshot({ path: new URL('dashboard-run.png', out).pathname, fullPage: true });

  console.log(`screenshots in ${out.pathname}`);
} finally {
  await browser.close();
  await rm(profile, { recursive: true, force: true });
  await app.close();
  await dropTables();
}
