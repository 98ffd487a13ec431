import { createHash } from 'node:crypto';
import net from 'node:net';
import mysql from 'mysql2/promise';
import { CuttingProxy } from '../utils/cutting-proxy.js';
import { rawConnection, uniquePrefix } from '../utils/db.js';
import { waitFor } from '../utils/wait.js';

const TARGET = { host: '127.0.0.1', port: 3306 };
const COMMIT = (sql: string) => /\bCOMMIT\b/i.test(sql);
const MAX_PIECE = 0xffffff;

/** A deadline on a promise, so a cut that never comes fails the test instead of hanging it. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
}

/** One logical MySQL packet as the client sends it: 0xFFFFFF pieces, then a shorter (maybe empty) one. */
function frame(payload: Buffer, seq: number): Buffer {
  const parts: Buffer[] = [];
  for (let off = 0; ; off += MAX_PIECE) {
    const piece = payload.subarray(off, off + MAX_PIECE);
    const header = Buffer.from([
      piece.length & 0xff,
      (piece.length >> 8) & 0xff,
      (piece.length >> 16) & 0xff,
      seq++ & 0xff,
    ]);
    parts.push(header, piece);
    if (piece.length < MAX_PIECE) break;
  }
  return Buffer.concat(parts);
}

const comQuery = (sql: string | Buffer) =>
  frame(Buffer.concat([Buffer.from([0x03]), Buffer.isBuffer(sql) ? sql : Buffer.from(sql)]), 0);
/** A handshake response (or SSL request when `ssl`) with the given capability flags, sequence id 1. */
function handshakeResponse(flags: number, ssl = false): Buffer {
  const payload = Buffer.alloc(ssl ? 32 : 40);
  payload.writeUInt32LE(flags, 0);
  payload.writeUInt32LE(0x1000000, 4);
  payload[8] = 45;
  if (!ssl) payload.write('root\0', 32);
  return frame(payload, 1);
}
const PROTOCOL_41 = 0x200;
const SECURE_CONNECTION = 0x8000;

/** A stand-in server that only records what reaches it (the proxy never parses server→client bytes). */
async function sink(onData?: (all: Buffer, socket: net.Socket) => void) {
  const chunks: Buffer[] = [];
  let closed!: () => void;
  const socketClosed = new Promise<void>((r) => (closed = r));
  const server = net.createServer((socket) => {
    socket.on('data', (d: Buffer) => {
      chunks.push(d);
      onData?.(Buffer.concat(chunks), socket);
    });
    socket.on('error', () => undefined);
    socket.on('close', () => closed());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const sockets = new Set<net.Socket>();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    received: () => Buffer.concat(chunks),
    socketClosed,
    close: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        for (const s of sockets) s.destroy();
      }),
  };
}

/** Writes `data` to `socket` in pieces of the given sizes (cycled), each handed to the kernel before the next. */
async function writeInPieces(socket: net.Socket, data: Buffer, sizes: number[]): Promise<number> {
  let pieces = 0;
  for (let off = 0, i = 0; off < data.length; i++) {
    const n = sizes[i % sizes.length];
    const piece = data.subarray(off, off + n);
    off += piece.length;
    pieces++;
    await new Promise<void>((resolve, reject) => socket.write(piece, (err) => (err ? reject(err) : resolve())));
  }
  return pieces;
}

async function connectRaw(port: number): Promise<net.Socket> {
  const s = net.connect({ host: '127.0.0.1', port, noDelay: true });
  await new Promise<void>((resolve, reject) => s.once('connect', resolve).once('error', reject));
  return s;
}

describe('CuttingProxy: MySQL packet framing (stand-in server)', () => {
  const proxies: CuttingProxy[] = [];
  const sinks: { close(): Promise<void> }[] = [];
  afterEach(async () => {
    for (const p of proxies.splice(0)) await p.close();
    for (const s of sinks.splice(0)) await s.close();
  });

  async function sinkFor(onData?: (all: Buffer, socket: net.Socket) => void) {
    const s = await sink(onData);
    sinks.push(s);
    return s;
  }

  it('passes a stream of small, 17 MiB and exactly-0xFFFFFF packets through byte for byte, split anywhere, and cuts before COMMIT', async () => {
    const target = await sinkFor();
    const proxy = await CuttingProxy.start({ target: { host: '127.0.0.1', port: target.port } });
    proxies.push(proxy);
    const seen: number[] = [];
    const cut = proxy.cutOnce({
      match: (sql, info) => {
        seen.push(info.bytes);
        return sql === 'COMMIT';
      },
      when: 'before',
    });

    const big = Buffer.alloc(17 * 1024 * 1024 + 123, 'a'); // two pieces: 0xFFFFFF bytes and the rest
    big.write("SELECT '", 0);
    big.write("'", big.length - 1);
    const exact = Buffer.alloc(MAX_PIECE - 1, 'b'); // payload = 0x03 + this = exactly 0xFFFFFF: a full piece and an empty one
    exact.write("SELECT '", 0);
    exact.write("'", exact.length - 1);
    const head = Buffer.concat([
      handshakeResponse(PROTOCOL_41 | SECURE_CONNECTION),
      // An auth-phase packet (sequence id 3) whose first byte happens to be 0x03: not a command.
      frame(Buffer.from('\x03COMMIT'), 3),
      comQuery('SELECT 1'),
    ]);
    const bigFramed = comQuery(big);
    const exactFramed = comQuery(exact);
    expect(exactFramed.length).toBe(4 + MAX_PIECE + 4); // the empty trailing piece is there
    // Several packets in one chunk.
    const many = Buffer.concat([comQuery('SELECT 2'), comQuery('SELECT 3;\nSELECT 4'), comQuery('BEGIN')]);
    const commit = comQuery('COMMIT');
    const after = comQuery('SELECT 5'); // sent in the same chunk as COMMIT: must not reach the server either
    const expected = Buffer.concat([head, bigFramed, exactFramed, many]);

    const client = await connectRaw(proxy.port);
    client.on('error', () => undefined);
    const clientClosed = new Promise<void>((r) => client.once('close', () => r()));
    const chunksBefore = proxy.stats.clientChunks;
    // Tiny pieces first so headers straddle reads, then larger uneven ones.
    let pieces = await writeInPieces(client, head, [1, 2, 3, 1, 5]);
    pieces += await writeInPieces(client, bigFramed, [3, 4093, 65_537, 1_000_003]);
    pieces += await writeInPieces(client, exactFramed, [1_048_573, 7]);
    pieces += await writeInPieces(client, many, [many.length]);
    client.write(Buffer.concat([commit, after]));

    const event = await within(cut, 10_000, 'the cut before COMMIT');
    await within(Promise.all([clientClosed, target.socketClosed]), 10_000, 'both sockets closed');
    expect(event).toMatchObject({ when: 'before', sql: 'COMMIT', cut: 1, matched: 1 });
    expect(proxy.cuts).toBe(1);
    expect(pieces).toBeGreaterThan(50);
    expect(proxy.stats.clientChunks - chunksBefore).toBeGreaterThan(50);

    const received = target.received();
    expect(received.length).toBe(expected.length);
    expect(received.equals(expected)).toBe(true);
    // The match saw each COM_QUERY whole (bytes = payload with the command byte), and only those.
    expect(seen).toEqual([9, big.length + 1, MAX_PIECE, 9, 19, 6, 7]);
    expect(proxy.queries.map((q) => q.bytes)).toEqual(seen);
    expect(proxy.queries.map((q) => q.sql.length)).toEqual([8, 2001, 2001, 8, 18, 5, 6]); // cut to 2000 + '…'
    expect(proxy.queries.at(-1)).toMatchObject({ sql: 'COMMIT', cut: 'before' });
    expect(proxy.open).toBe(0);
  });

  it("'after' forwards the whole packet, and the server's reply never reaches the client", async () => {
    const commit = comQuery('START TRANSACTION;\nUPDATE t SET v = 1;\nCOMMIT');
    const head = Buffer.concat([handshakeResponse(PROTOCOL_41 | SECURE_CONNECTION), comQuery('SELECT 1')]);
    const target = await sinkFor((all, socket) => {
      // Replies as soon as the COMMIT packet is in: that reply must be dropped.
      if (all.length >= head.length + commit.length) socket.write('REPLY');
    });
    const proxy = await CuttingProxy.start({ target: { host: '127.0.0.1', port: target.port } });
    proxies.push(proxy);
    const cut = proxy.cutOnce({ match: COMMIT, when: 'after' });
    const client = await connectRaw(proxy.port);
    let fromServer = 0;
    client.on('data', (d: Buffer) => (fromServer += d.length));
    client.on('error', () => undefined);
    const clientClosed = new Promise<void>((r) => client.once('close', () => r()));
    await writeInPieces(client, Buffer.concat([head, commit]), [5, 17, 3]);

    const event = await within(cut, 10_000, 'the cut after COMMIT');
    await within(Promise.all([clientClosed, target.socketClosed]), 10_000, 'both sockets closed');
    expect(event).toMatchObject({ when: 'after', connection: 1, cut: 1 });
    expect(event.sql).toContain('UPDATE t SET v = 1');
    expect(target.received().equals(Buffer.concat([head, commit]))).toBe(true);
    expect(fromServer).toBe(0);
  });

  it.each([
    ['an SSL request', handshakeResponse(PROTOCOL_41 | SECURE_CONNECTION | 0x800, true)],
    ['a compressed-protocol handshake', handshakeResponse(PROTOCOL_41 | SECURE_CONNECTION | 0x20)],
  ])('after %s, forwards everything unparsed (nothing matched, nothing recorded)', async (_name, hello) => {
    const target = await sinkFor();
    const proxy = await CuttingProxy.start({ target: { host: '127.0.0.1', port: target.port } });
    proxies.push(proxy);
    const cut = proxy.cutOnce({ match: () => true, when: 'before' });
    const rest = Buffer.concat([comQuery('COMMIT'), Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]), comQuery('COMMIT')]);
    const all = Buffer.concat([hello, rest]);
    const client = await connectRaw(proxy.port);
    client.on('error', () => undefined);
    await writeInPieces(client, all, [3, 11]);
    await waitFor(() => target.received().length === all.length, 'all bytes at the stand-in server', 10_000, 5);
    expect(target.received().equals(all)).toBe(true);
    expect(proxy.cuts).toBe(0);
    expect(cut.matched).toBe(0);
    expect(proxy.queries).toEqual([]);
    client.destroy();
    await within(target.socketClosed, 10_000, 'the upstream socket closed');
  });
});

describe('CuttingProxy: a connection cut around COMMIT (MariaDB)', () => {
  const table = `${uniquePrefix('cutproxy')}rows`;
  let proxy: CuttingProxy;
  let direct: mysql.Connection;
  const opened: mysql.Connection[] = [];

  /** A mysql2 connection through the proxy. */
  async function through(multipleStatements = false): Promise<mysql.Connection> {
    const conn = await mysql.createConnection({ uri: proxy.url('test'), multipleStatements });
    conn.on('error', () => undefined); // a cut connection reports on the connection too
    opened.push(conn);
    return conn;
  }

  async function serverThreadId(conn: mysql.Connection): Promise<number> {
    const [rows] = await conn.query<mysql.RowDataPacket[]>('SELECT CONNECTION_ID() AS id');
    return Number(rows[0].id);
  }

  /** The server has finished with the cut connection (committed or rolled back, and gone). */
  async function serverThreadGone(id: number): Promise<void> {
    await waitFor(
      async () => {
        const [rows] = await direct.query<mysql.RowDataPacket[]>(
          'SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST WHERE ID = ?',
          [id],
        );
        return Number(rows[0].n) === 0;
      },
      `server thread ${id} to end`,
      15_000,
    );
  }

  async function rowCount(id: string): Promise<number> {
    const [rows] = await direct.query<mysql.RowDataPacket[]>(`SELECT COUNT(*) AS n FROM \`${table}\` WHERE id = ?`, [
      id,
    ]);
    return Number(rows[0].n);
  }

  async function expectConnectionError(p: Promise<unknown>): Promise<void> {
    const err = (await within(
      p.then(
        () => {
          throw new Error('the query succeeded through a cut connection');
        },
        (e: unknown) => e,
      ),
      10_000,
      'the client to see the cut',
    )) as { code?: string; fatal?: boolean };
    expect(err.fatal).toBe(true);
    expect(['PROTOCOL_CONNECTION_LOST', 'ECONNRESET', 'EPIPE']).toContain(err.code);
  }

  beforeAll(async () => {
    proxy = await CuttingProxy.start({ target: TARGET });
    direct = await rawConnection();
    await direct.query(`CREATE TABLE \`${table}\` (id VARCHAR(64) PRIMARY KEY, v LONGTEXT) ENGINE=InnoDB`);
  });

  afterAll(async () => {
    for (const c of opened) c.destroy();
    await proxy?.close();
    await direct?.query(`DROP TABLE IF EXISTS \`${table}\``);
    await direct?.end();
  });

  it('passes ordinary queries, parameters and multi-statement packets', async () => {
    const conn = await through();
    const [one] = await conn.query<mysql.RowDataPacket[]>('SELECT 1 + 1 AS two');
    expect(one[0].two).toBe(2);
    await conn.query(`INSERT INTO \`${table}\` (id, v) VALUES (?, ?)`, ['plain', 'héllo ✓ \u{1F600}']);
    const [back] = await conn.query<mysql.RowDataPacket[]>(`SELECT v FROM \`${table}\` WHERE id = ?`, ['plain']);
    expect(back[0].v).toBe('héllo ✓ \u{1F600}');
    const [viaPrepared] = await conn.execute<mysql.RowDataPacket[]>(`SELECT v FROM \`${table}\` WHERE id = ?`, [
      'plain',
    ]);
    expect(viaPrepared[0].v).toBe('héllo ✓ \u{1F600}');

    const multi = await through(true);
    const [results] = await multi.query<mysql.RowDataPacket[][]>('SELECT 1 AS a;\nSELECT 2 AS b');
    expect(results[0][0].a).toBe(1);
    expect(results[1][0].b).toBe(2);
    // The SQL the proxy saw is what mysql2 sent, parameters interpolated.
    expect(proxy.queries.map((q) => q.sql)).toContain(
      `INSERT INTO \`${table}\` (id, v) VALUES ('plain', 'héllo ✓ \u{1F600}')`,
    );
    expect(proxy.queries.map((q) => q.sql)).toContain('SELECT 1 AS a;\nSELECT 2 AS b');
    expect(proxy.cuts).toBe(0);
    await conn.end();
    await multi.end();
  });

  it("'after' COMMIT: the client gets a connection error, and the row was committed", async () => {
    const conn = await through();
    const thread = await serverThreadId(conn);
    await conn.query('START TRANSACTION');
    await conn.query(`INSERT INTO \`${table}\` (id, v) VALUES (?, ?)`, ['after', 'x']);
    const cuts = proxy.cuts;
    const cut = proxy.cutOnce({ match: COMMIT, when: 'after' });
    await expectConnectionError(conn.query('COMMIT'));
    expect(await within(cut, 10_000, 'the cut')).toMatchObject({ when: 'after', sql: 'COMMIT' });
    expect(proxy.cuts).toBe(cuts + 1);
    await serverThreadGone(thread);
    expect(await rowCount('after')).toBe(1);
  });

  it("'before' COMMIT: the client gets a connection error, and the row is not there", async () => {
    const conn = await through();
    const thread = await serverThreadId(conn);
    await conn.query('START TRANSACTION');
    await conn.query(`INSERT INTO \`${table}\` (id, v) VALUES (?, ?)`, ['before', 'x']);
    const cut = proxy.cutOnce({ match: COMMIT, when: 'before' });
    await expectConnectionError(conn.query('COMMIT'));
    expect(await within(cut, 10_000, 'the cut')).toMatchObject({ when: 'before', sql: 'COMMIT' });
    await serverThreadGone(thread);
    expect(await rowCount('before')).toBe(0);
  });

  it.each([
    ['after', 1],
    ['before', 0],
  ] as const)("'%s' a multi-statement packet ending in COMMIT: error, and %i row(s)", async (when, rows) => {
    const conn = await through(true);
    const thread = await serverThreadId(conn);
    const id = `multi-${when}`;
    const cut = proxy.cutOnce({ match: COMMIT, when });
    await expectConnectionError(
      conn.query(`START TRANSACTION;\nINSERT INTO \`${table}\` (id, v) VALUES (?, 'm');\nCOMMIT`, [id]),
    );
    const event = await within(cut, 10_000, 'the cut');
    expect(event.sql).toBe(`START TRANSACTION;\nINSERT INTO \`${table}\` (id, v) VALUES ('${id}', 'm');\nCOMMIT`);
    await serverThreadGone(thread);
    expect(await rowCount(id)).toBe(rows);
  });

  it('skip / nth: lets the first matches through and cuts the nth', async () => {
    const conn = await through();
    const thread = await serverThreadId(conn);
    const cut = proxy.cutOnce({ match: (sql) => sql === 'COMMIT', when: 'after', nth: 3 });
    for (const id of ['nth-1', 'nth-2']) {
      await conn.query('START TRANSACTION');
      await conn.query(`INSERT INTO \`${table}\` (id, v) VALUES (?, 'n')`, [id]);
      await conn.query('COMMIT');
    }
    expect(cut.matched).toBe(2);
    expect(cut.fired).toBe(false);
    await conn.query('START TRANSACTION');
    await conn.query(`INSERT INTO \`${table}\` (id, v) VALUES (?, 'n')`, ['nth-3']);
    await expectConnectionError(conn.query('COMMIT'));
    expect(await within(cut, 10_000, 'the cut')).toMatchObject({ matched: 3 });
    expect(cut.fired).toBe(true);
    await serverThreadGone(thread);
    expect([await rowCount('nth-1'), await rowCount('nth-2'), await rowCount('nth-3')]).toEqual([1, 1, 1]);
  });

  it('several rules armed at once, each cutting its own connection', async () => {
    const a = await through(true);
    const b = await through(true);
    const c = await through(true);
    const threads = await Promise.all([a, b, c].map(serverThreadId));
    const cuts = proxy.cuts;
    const [cutA, cutB] = proxy.cutEach([
      { match: (sql) => COMMIT(sql) && sql.includes("'each-a'"), when: 'before' },
      { match: (sql) => COMMIT(sql) && sql.includes("'each-b'"), when: 'after' },
    ]);
    const txn = (id: string) => `START TRANSACTION;\nINSERT INTO \`${table}\` (id, v) VALUES ('${id}', 'e');\nCOMMIT`;
    await c.query(txn('each-c')); // matches neither rule
    await expectConnectionError(b.query(txn('each-b')));
    await expectConnectionError(a.query(txn('each-a')));
    const [ea, eb] = await within(Promise.all([cutA, cutB]), 10_000, 'both cuts');
    expect(ea.when).toBe('before');
    expect(eb.when).toBe('after');
    expect(eb.cut).toBe(cuts + 1);
    expect(ea.cut).toBe(cuts + 2);
    expect(proxy.cuts).toBe(cuts + 2);
    await serverThreadGone(threads[0]);
    await serverThreadGone(threads[1]);
    expect([await rowCount('each-a'), await rowCount('each-b'), await rowCount('each-c')]).toEqual([0, 1, 1]);
    await c.query('SELECT 1'); // the untouched connection still works
    await c.end();
  });

  it('a disarmed rule does not cut', async () => {
    const conn = await through();
    const cut = proxy.cutOnce({ match: COMMIT, when: 'before' });
    cut.disarm();
    await expect(cut).rejects.toThrow('cut disarmed');
    await conn.query('START TRANSACTION');
    await conn.query('COMMIT');
    await conn.end();
  });

  it('dropAll() drops every proxied connection and keeps listening', async () => {
    const conn = await mysql.createConnection({ uri: proxy.url('test') });
    const dropped = new Promise<{ code?: string }>((r) => conn.on('error', r));
    const thread = await serverThreadId(conn);
    proxy.dropAll();
    expect(await within(dropped, 10_000, 'the drop')).toMatchObject({ code: 'PROTOCOL_CONNECTION_LOST' });
    await serverThreadGone(thread);
    conn.destroy();
    const again = await through();
    await again.query('SELECT 1');
    await again.end();
  });

  it('passes a 1 MiB packet split across many TCP chunks intact, and the largest the server allows', async () => {
    const [vars] = await direct.query<mysql.RowDataPacket[]>('SELECT @@max_allowed_packet AS m');
    const maxAllowed = Number(vars[0].m);
    const conn = await through();
    const insert = `INSERT INTO \`${table}\` (id, v) VALUES (?, ?)`;
    // A payload of 0xFFFFFF bytes or more goes as several pieces; this server (max_allowed_packet
    // 16 MiB, only settable globally) refuses those, so the pieces themselves are proven against the
    // stand-in server above, and here the largest single piece that fits goes through.
    const bigLength = maxAllowed >= 17 * 1024 * 1024 + 4096 ? 17 * 1024 * 1024 : Math.min(maxAllowed, MAX_PIECE) - 4096;
    for (const [id, length] of [
      ['large-1mib', 1024 * 1024],
      ['large-max', bigLength],
    ] as const) {
      // Not one repeated byte, so a shifted or dropped chunk would show in the hash.
      const value = createHash('sha256')
        .update(id)
        .digest('hex')
        .repeat(Math.ceil(length / 64))
        .slice(0, length);
      const chunksBefore = proxy.stats.clientChunks;
      await conn.query(insert, [id, value]);
      expect(proxy.stats.clientChunks - chunksBefore).toBeGreaterThan(length >= 1024 * 1024 ? 4 : 0);
      const [rows] = await direct.query<mysql.RowDataPacket[]>(
        `SELECT LENGTH(v) AS n, SHA2(v, 256) AS h FROM \`${table}\` WHERE id = ?`,
        [id],
      );
      expect(Number(rows[0].n)).toBe(length);
      expect(rows[0].h).toBe(createHash('sha256').update(value).digest('hex'));
      // And back the other way through the proxy.
      const [viaProxy] = await conn.query<mysql.RowDataPacket[]>(`SELECT v FROM \`${table}\` WHERE id = ?`, [id]);
      expect(viaProxy[0].v === value).toBe(true);
    }
    const recorded = proxy.queries.filter((q) => q.sql.startsWith(`INSERT INTO \`${table}\``) && q.bytes > 1024 * 1024);
    expect(recorded.some((q) => q.bytes > bigLength)).toBe(true);
    if (bigLength > MAX_PIECE) expect(recorded.some((q) => q.bytes >= MAX_PIECE)).toBe(true);
    await conn.end();
  });

  it('close() ends the listener and every proxied socket, cuts pending or not', async () => {
    const own = await CuttingProxy.start({ target: TARGET });
    const idle = await mysql.createConnection({ uri: own.url('test') });
    const busy = await mysql.createConnection({ uri: own.url('test') });
    const idleError = new Promise<unknown>((r) => idle.on('error', r));
    busy.on('error', () => undefined);
    const thread = await serverThreadId(busy);
    const pending = own.cutOnce({ match: COMMIT, when: 'after' });
    expect(own.open).toBe(2);
    const inFlight = busy.query('SELECT SLEEP(30)');
    // The query is at the server once its thread shows it.
    await waitFor(async () => {
      const [rows] = await direct.query<mysql.RowDataPacket[]>(
        'SELECT INFO FROM information_schema.PROCESSLIST WHERE ID = ?',
        [thread],
      );
      return rows[0]?.INFO === 'SELECT SLEEP(30)';
    }, 'the SLEEP at the server');
    await within(own.close(), 10_000, 'close()');
    expect(own.open).toBe(0);
    await expectConnectionError(inFlight);
    await within(idleError, 10_000, 'the idle connection to see the close');
    await expect(pending).rejects.toThrow();
    await expect(mysql.createConnection({ uri: own.url('test'), connectTimeout: 5_000 })).rejects.toMatchObject({
      code: 'ECONNREFUSED',
    });
    expect(() => own.cutOnce({ match: COMMIT, when: 'before' })).not.toThrow();
    await expect(own.cutOnce({ match: COMMIT, when: 'before' })).rejects.toThrow('closed');
    idle.destroy();
    busy.destroy();
    await direct.query(`KILL ${thread}`).catch(() => undefined); // don't leave the SLEEP running on the shared server
  });
});
