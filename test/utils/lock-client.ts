import { DataSource } from 'typeorm';
import { SqlClient } from '../../lib/storage/sql-client.js';

/** A SqlClient over a pool of its own, as the module makes one, for tests of the storage layer alone. */
export async function ownSqlClient(url: string): Promise<{ client: SqlClient; close: () => Promise<void> }> {
  const ds = new DataSource({
    type: 'mysql',
    url,
    supportBigNumbers: true,
    bigNumberStrings: false,
    multipleStatements: true,
    poolSize: 10,
  } as ConstructorParameters<typeof DataSource>[0]);
  await ds.initialize();
  return { client: new SqlClient(ds, true), close: () => ds.destroy() };
}
