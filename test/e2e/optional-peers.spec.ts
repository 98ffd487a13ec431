/**
 * @opentelemetry/api and @nestjs/terminus are optional peer dependencies: an app of the
 * built package that has neither must import the module, run workflows and check health.
 * The same app runs twice in a child process: with both packages, and with a loader hook
 * that makes both fail to import as a missing package does.
 */
import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { promisify } from 'node:util';
import { DB_URL, dropTables, uniquePrefix } from '../utils/db.js';

const run = promisify(execFile);
const FIXTURES = resolve(process.cwd(), '.tmp/test/fixtures');

async function bareApp(hide: boolean): Promise<any> {
  const prefix = uniquePrefix('peers');
  try {
    const args = [...(hide ? ['--import', resolve(FIXTURES, 'hide-peers.js')] : []), resolve(FIXTURES, 'bare-app.js')];
    const { stdout } = await run(process.execPath, args, {
      env: { ...process.env, WORKFLOW_DB_URL: DB_URL, PREFIX: prefix },
      timeout: 60_000,
    });
    return JSON.parse(stdout.trim().split('\n').pop()!);
  } finally {
    await dropTables(prefix);
  }
}

describe('optional peer dependencies', () => {
  const expected = {
    outcome: { status: 'succeeded', result: 2, headers: { tenant: 'acme' } },
    health: { workflow: { status: 'up', lagMs: 0 } },
  };

  it('with both installed, the app runs and checks health', async () => {
    await expect(bareApp(false)).resolves.toEqual({ otel: 'present', terminus: 'present', ...expected });
  }, 90_000);

  it('without @opentelemetry/api and @nestjs/terminus, the same app runs and checks health', async () => {
    await expect(bareApp(true)).resolves.toEqual({ otel: 'absent', terminus: 'absent', ...expected });
  }, 90_000);
});
