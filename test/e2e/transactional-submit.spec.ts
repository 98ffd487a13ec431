/**
 * The README's pattern: a business transaction (the server's default REPEATABLE READ)
 * saves an order and submits its workflow through the same EntityManager. Nothing the
 * module does in there may take a gap or next-key lock: with increasing ids every new
 * id falls in one gap, and shared gap locks there deadlock concurrent callers.
 */
import { Injectable } from '@nestjs/common';
import type { TestingModule } from '@nestjs/testing';
import { DataSource } from 'typeorm';
import { type Step, StepOutcome, StepRunner, WorkflowService } from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { DB_URL, dropTables, rawConnection, uniquePrefix } from '../utils/db.js';
import { deferred, waitFor } from '../utils/wait.js';

@Injectable()
@StepRunner('order')
class OrderRunner {
  runStep(step: Step<{ n: number }>) {
    return StepOutcome.succeed({ shipped: step.payload.n });
  }
}

describe('submit inside the caller’s REPEATABLE READ transaction', () => {
  const prefix = uniquePrefix('txsubmit');
  const orders = `\`${prefix}orders\``;
  let ds: DataSource;
  let app: TestingModule;
  let workflows: WorkflowService;

  beforeAll(async () => {
    ds = new DataSource({ type: 'mysql', url: DB_URL, poolSize: 40 } as any);
    await ds.initialize();
    app = await startApp({ prefix, providers: [OrderRunner], options: { connection: undefined, dataSource: ds } });
    workflows = app.get(WorkflowService);
    await ds.query(`CREATE TABLE ${orders} (id VARCHAR(64) PRIMARY KEY, n INT NOT NULL) ENGINE=InnoDB`);
  });

  afterAll(async () => {
    await app?.close();
    await ds.query(`DROP TABLE IF EXISTS ${orders}`).catch(() => undefined);
    await ds.destroy();
    await dropTables(prefix);
  });

  async function runIds(like: string): Promise<string[]> {
    const conn = await rawConnection();
    try {
      const [rows] = await conn.query(`SELECT id FROM \`${prefix}runs\` WHERE id LIKE ? ORDER BY id`, [like]);
      return (rows as Array<{ id: string }>).map((r) => r.id);
    } finally {
      await conn.end();
    }
  }

  it('16 concurrent business transactions submitting increasing ids all commit, and every run succeeds', async () => {
    const n = 16;
    let finished = 0;
    const allSubmitted = deferred();
    const submitted = () => {
      if (++finished === n) allSubmitted.resolve();
    };
    const results = await Promise.allSettled(
      Array.from({ length: n }, (_, i) =>
        ds.transaction('REPEATABLE READ', async (m) => {
          const id = `order-${String(i).padStart(4, '0')}`;
          await m.query(`INSERT INTO ${orders} (id, n) VALUES (?, ?)`, [id, i]);
          try {
            await workflows.submit('order', { runId: id, input: { n: i } }, { manager: m });
          } finally {
            submitted();
          }
          // Every transaction stays open until all have submitted, so their locks overlap.
          await Promise.race([allSubmitted.promise, new Promise((r) => setTimeout(r, 10_000).unref())]);
        }),
      ),
    );
    expect(
      results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason)),
    ).toEqual([]);
    expect(await runIds('order-%')).toHaveLength(n);
    for (let i = 0; i < n; i++) {
      const outcome = await workflows.waitForOutcome(`order-${String(i).padStart(4, '0')}`, { timeoutMs: 15_000 });
      expect(outcome).toMatchObject({ status: 'succeeded', result: { shipped: i } });
    }
  });

  it('a rolled-back business transaction leaves no run and no job', async () => {
    await expect(
      ds.transaction('REPEATABLE READ', async (m) => {
        await m.query(`INSERT INTO ${orders} (id, n) VALUES ('rolled-1', 1)`);
        await workflows.submit('order', { runId: 'rolled-1', input: { n: 1 } }, { manager: m });
        throw new Error('payment declined');
      }),
    ).rejects.toThrow('payment declined');
    expect(await runIds('rolled-%')).toEqual([]);
    const conn = await rawConnection();
    try {
      const [jobs] = await conn.query(`SELECT COUNT(*) AS c FROM \`${prefix}jobs\` WHERE run_id = 'rolled-1'`);
      expect(Number((jobs as Array<{ c: number }>)[0].c)).toBe(0);
    } finally {
      await conn.end();
    }
  });

  it('a plain submit of a new id completes while another caller’s transaction stays open', async () => {
    const release = deferred();
    const holding = deferred();
    const open = ds.transaction('REPEATABLE READ', async (m) => {
      await m.query(`INSERT INTO ${orders} (id, n) VALUES ('open-0001', 1)`);
      await workflows.submit('order', { runId: 'open-0001', input: { n: 1 } }, { manager: m });
      holding.resolve();
      await release.promise;
    });
    await holding.promise;
    try {
      const plain = workflows.submit('order', { runId: 'open-0002', input: { n: 2 } });
      const outcome = await Promise.race([
        plain,
        new Promise((_, reject) =>
          setTimeout(() => reject(new Error('plain submit waited on the open transaction')), 5_000).unref(),
        ),
      ]);
      expect(outcome).toEqual({ runId: 'open-0002', newlySubmitted: true });
      // The open transaction's run is invisible until it commits; the plain one runs meanwhile.
      expect(await workflows.waitForOutcome('open-0002', { timeoutMs: 10_000 })).toMatchObject({ status: 'succeeded' });
      expect(await workflows.status('open-0001')).toBeNull();
    } finally {
      release.resolve();
      await open;
    }
    await waitFor(
      async () => (await workflows.status('open-0001'))?.state === 'succeeded',
      'the committed run to succeed',
    );
  });

  it('re-submitting an existing id inside a business transaction is idempotent and takes no gap lock', async () => {
    await workflows.submit('order', { runId: 'again-0001', input: { n: 7 } });
    const release = deferred();
    const holding = deferred();
    const open = ds.transaction('REPEATABLE READ', async (m) => {
      const again = await workflows.submit('order', { runId: 'again-0001', input: { n: 7 } }, { manager: m });
      expect(again).toEqual({ runId: 'again-0001', newlySubmitted: false });
      await workflows.submit('order', { runId: 'again-0003', input: { n: 3 } }, { manager: m });
      holding.resolve();
      await release.promise;
    });
    await holding.promise;
    try {
      // An id in the same gap as the open transaction's ids.
      const plain = workflows.submit('order', { runId: 'again-0002', input: { n: 2 } });
      await expect(
        Promise.race([
          plain,
          new Promise((_, reject) => setTimeout(() => reject(new Error('waited on a gap lock')), 5_000).unref()),
        ]),
      ).resolves.toEqual({ runId: 'again-0002', newlySubmitted: true });
    } finally {
      release.resolve();
      await open;
    }
  });
});
