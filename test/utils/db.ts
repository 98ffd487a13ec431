import mysql from 'mysql2/promise';

export const DB_URL = process.env.WORKFLOW_DB_URL ?? 'mysql://root@127.0.0.1:3306/test';

let counter = 0;

/** A table prefix no other test file uses, so files can run in any order against one database. */
export function uniquePrefix(name: string): string {
  return `t_${name.replace(/[^A-Za-z0-9]/g, '').slice(0, 12)}_${process.pid % 10000}_${counter++}_`;
}

/** A raw connection for assertions straight from the tables. */
export async function rawConnection(url = DB_URL): Promise<mysql.Connection> {
  return mysql.createConnection({ uri: url, supportBigNumbers: true, bigNumberStrings: false });
}

export async function dropTables(prefix: string, url = DB_URL): Promise<void> {
  const conn = await rawConnection(url);
  try {
    for (const t of [
      'locks',
      'history',
      'flow_starts',
      'flow',
      'schedules',
      'signals',
      'handlers',
      'dead',
      'jobs',
      'runs',
      'migrations',
    ])
      await conn.query(`DROP TABLE IF EXISTS \`${prefix}${t}\``);
  } finally {
    await conn.end();
  }
}

/** Every prefix a file used, so afterAll can drop them all. */
export class Prefixes {
  private readonly all: string[] = [];
  constructor(private readonly name: string) {}
  next(): string {
    const p = uniquePrefix(this.name);
    this.all.push(p);
    return p;
  }
  async dropAll(): Promise<void> {
    for (const p of this.all) await dropTables(p);
  }
}
