import { withNamedLock } from '../../lib/storage/named-lock.js';
import { DB_URL, dropTables, rawConnection, uniquePrefix } from '../utils/db.js';
import { ownSqlClient } from '../utils/lock-client.js';

/** The named lock (migrate, retention) on one server; test/cluster/named-lock.spec.ts runs the same across nodes. */
describe('named lock', () => {
  const prefix = uniquePrefix('lock');
  let clients: Array<Awaited<ReturnType<typeof ownSqlClient>>> = [];
  beforeAll(async () => {
    clients = await Promise.all([ownSqlClient(DB_URL), ownSqlClient(DB_URL)]);
  });
  afterAll(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await dropTables(prefix);
  });

  it('is held by one process at a time: the other gets null (no wait) or waits its turn', async () => {
    const [a, b] = clients;
    let inside = 0;
    let most = 0;
    const hold = (c: typeof a, wait: number) =>
      withNamedLock(c.client, 'retention', prefix, wait, async () => {
        most = Math.max(most, ++inside);
        await new Promise((r) => setTimeout(r, 300));
        inside--;
        return 'done';
      });
    const first = hold(a, 0);
    await new Promise((r) => setTimeout(r, 100));
    expect(await hold(b, 0)).toBeNull();
    expect(await Promise.all([first, hold(b, 5)])).toEqual(['done', 'done']);
    expect(most).toBe(1);
  });

  it('makes its table when the schema predates it (the row and the table come on first use)', async () => {
    const conn = await rawConnection();
    try {
      await conn.query(`DROP TABLE IF EXISTS \`${prefix}locks\``);
      expect(await withNamedLock(clients[0].client, 'migrate', prefix, 0, async () => 1)).toBe(1);
      const [rows] = await conn.query(`SELECT name, holder FROM \`${prefix}locks\``);
      expect(rows).toEqual([{ name: 'migrate', holder: null }]);
    } finally {
      await conn.end();
    }
  });

  it('frees itself when its holder dies: the lease runs out and another process takes it', async () => {
    const conn = await rawConnection();
    try {
      await withNamedLock(clients[0].client, 'retention', prefix, 0, async () => 1);
      // A holder that crashed mid-sweep: its row says held, and nobody renews it.
      await conn.query(
        `UPDATE \`${prefix}locks\` SET holder = 'dead:1:x', lease_until = DATE_ADD(UTC_TIMESTAMP(3), INTERVAL 1 SECOND) WHERE name = 'retention'`,
      );
      expect(await withNamedLock(clients[1].client, 'retention', prefix, 0, async () => 1)).toBeNull();
      const started = Date.now();
      expect(await withNamedLock(clients[1].client, 'retention', prefix, 5, async () => 'taken over')).toBe(
        'taken over',
      );
      expect(Date.now() - started).toBeGreaterThan(500);
    } finally {
      await conn.end();
    }
  });

  it('renews its lease while held, so a long holder keeps it past the lease', async () => {
    const [a, b] = clients;
    let other: string | null = 'not tried';
    await withNamedLock(
      a.client,
      'migrate',
      prefix,
      0,
      async () => {
        await new Promise((r) => setTimeout(r, 1_000));
        other = await withNamedLock(b.client, 'migrate', prefix, 0, async () => 'stolen');
      },
      400,
    );
    expect(other).toBeNull();
  });
});
