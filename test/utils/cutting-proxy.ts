import net from 'node:net';

/**
 * A TCP proxy of the test's own between a MySQL client and a MySQL/MariaDB server, that can drop
 * a connection exactly around one statement: `when: 'after'` forwards the matching COM_QUERY to the
 * server and then kills both sockets before the server's reply can reach the client (a lost COMMIT
 * reply: the server may well have applied it); `when: 'before'` kills both sockets without
 * forwarding it (the statement never ran).
 *
 * Only the client→server stream is parsed: MySQL packets are a 3-byte little-endian payload length
 * and a 1-byte sequence id; a logical packet of 0xFFFFFF bytes or more is sent as pieces of
 * 0xFFFFFF bytes ending with a shorter (possibly empty) piece. Every command starts with sequence id
 * 0, and the client never sends sequence id 0 while authenticating (handshake response = 1, auth
 * switch responses = 3, 5, …; LOCAL INFILE data continues the command's sequence), so "a logical
 * packet with sequence id 0 whose first payload byte is 0x03" is a COM_QUERY with the SQL after it.
 * A client that asks for TLS (SSL request) or for the compressed protocol is forwarded unparsed from
 * then on: nothing is matched or recorded on that connection. The server→client stream is forwarded
 * as is. Bytes are forwarded exactly as received, pieces and headers included.
 */

export type CutWhen = 'before' | 'after';

/** What a rule's `match` gets besides the SQL text. */
export interface QueryInfo {
  /** The proxy's id of the connection (1, 2, … in accept order), not the server's CONNECTION_ID(). */
  connection: number;
  /** 0-based count of the COM_QUERY packets seen on this connection before this one. */
  index: number;
  /** Payload bytes of the logical packet (command byte included). */
  bytes: number;
}

export interface CutRule {
  /** Sees the full SQL text of one COM_QUERY packet (all statements of a multi-statement packet). */
  match: (sql: string, info: QueryInfo) => boolean;
  /** 'after': forward the packet, then cut. 'before': cut without forwarding it. */
  when: CutWhen;
  /** Let this many matching packets through before cutting (cut on the (skip + 1)th match). Default 0. */
  skip?: number;
  /** Same as `skip: nth - 1`: cut on the nth match (1-based). Don't set both. */
  nth?: number;
}

export interface CutEvent {
  when: CutWhen;
  /** The SQL of the packet the cut happened at. */
  sql: string;
  connection: number;
  /** 1-based: this was the proxy's nth cut. */
  cut: number;
  /** How many packets this rule had matched, this one included. */
  matched: number;
}

export interface RecordedQuery {
  connection: number;
  index: number;
  bytes: number;
  /** The SQL, cut to `maxRecordedSql` characters. */
  sql: string;
  /** Set when the packet was cut at. */
  cut?: CutWhen;
}

export interface CuttingProxyOptions {
  target: { host: string; port: number };
  /** Listen address; default 127.0.0.1. */
  host?: string;
  /** Listen port; default 0 (any free port). */
  port?: number;
  /** User for `url()`; default 'root' (no password). */
  user?: string;
  /** Keep the last this many COM_QUERY packets in `queries`; default 200, 0 to keep none. */
  recordQueries?: number;
  /** Characters of each SQL text kept in `queries`; default 2000. */
  maxRecordedSql?: number;
}

/** A rule armed with `cutOnce`; the promise is settled exactly once. */
export interface ArmedCut extends Promise<CutEvent> {
  /** Take the rule out without cutting; its promise is rejected (already handled, no unhandled rejection). */
  disarm(): void;
  /** Matching packets seen so far (those let through by `skip` and the one cut at). */
  readonly matched: number;
  readonly fired: boolean;
}

interface Armed {
  rule: CutRule;
  skip: number;
  matched: number;
  settled: boolean;
  resolve: (e: CutEvent) => void;
  reject: (e: Error) => void;
}

const MAX_PIECE = 0xffffff;
const COM_QUERY = 0x03;
const CLIENT_COMPRESS = 0x20;
const CLIENT_SSL = 0x800;

/** Received chunks not parsed yet; takes bytes out without concatenating more than it must. */
class ChunkQueue {
  private chunks: Buffer[] = [];
  length = 0;

  push(b: Buffer): void {
    if (b.length === 0) return;
    this.chunks.push(b);
    this.length += b.length;
  }

  /** Byte `i` from the front (i < length). */
  peek(i: number): number {
    for (const c of this.chunks) {
      if (i < c.length) return c[i];
      i -= c.length;
    }
    throw new RangeError('peek past the end');
  }

  /** The first `n` bytes (n <= length), as few copies as possible. */
  take(n: number): Buffer[] {
    const out: Buffer[] = [];
    while (n > 0) {
      const c = this.chunks[0];
      if (c.length <= n) {
        out.push(c);
        this.chunks.shift();
        n -= c.length;
        this.length -= c.length;
      } else {
        out.push(c.subarray(0, n));
        this.chunks[0] = c.subarray(n);
        this.length -= n;
        n = 0;
      }
    }
    return out;
  }

  takeAll(): Buffer[] {
    const out = this.chunks;
    this.chunks = [];
    this.length = 0;
    return out;
  }
}

class ProxiedConnection {
  readonly queue = new ChunkQueue();
  /** Raw bytes (headers included) and payload pieces of the logical packet being reassembled. */
  private raw: Buffer[] = [];
  private payload: Buffer[] = [];
  private payloadBytes = 0;
  private firstSeq = -1;
  private packetsSeen = 0;
  private queryIndex = 0;
  /** Forward everything unparsed (TLS or compression negotiated). */
  private passthrough = false;
  /** Cut (or closing): drop whatever either side still sends. */
  dead = false;
  private clientPaused = false;
  private serverPaused = false;
  readonly closed: Promise<void>;

  constructor(
    readonly id: number,
    readonly client: net.Socket,
    readonly server: net.Socket,
    private readonly proxy: CuttingProxy,
  ) {
    let clientClosed!: () => void;
    let serverClosed!: () => void;
    const a = new Promise<void>((r) => (clientClosed = r));
    const b = new Promise<void>((r) => (serverClosed = r));
    this.closed = Promise.all([a, b]).then(() => undefined);
    // One side closing on its own (not a cut): the other gets what is still queued for it, then a
    // FIN, like a pipe. The proxy's cuts and close() destroy instead.
    client.once('close', () => {
      clientClosed();
      if (!server.destroyed) server.end();
    });
    server.once('close', () => {
      serverClosed();
      if (!client.destroyed) client.end();
    });
    client.on('error', () => undefined);
    server.on('error', () => undefined);
    client.on('data', (d: Buffer) => this.fromClient(d));
    server.on('data', (d: Buffer) => {
      proxy.stats.serverChunks++;
      proxy.stats.serverBytes += d.length;
      if (this.dead) return;
      if (!client.write(d) && !this.serverPaused) {
        this.serverPaused = true;
        server.pause();
        client.once('drain', () => {
          this.serverPaused = false;
          server.resume();
        });
      }
    });
  }

  kill(): void {
    this.dead = true;
    this.client.destroy();
    this.server.destroy();
  }

  private toServer(bufs: Buffer[], done?: () => void): void {
    const data = bufs.length === 1 ? bufs[0] : Buffer.concat(bufs);
    if (!this.server.write(data, done ? () => done() : undefined) && !this.clientPaused) {
      this.clientPaused = true;
      this.client.pause();
      this.server.once('drain', () => {
        this.clientPaused = false;
        this.client.resume();
      });
    }
  }

  private fromClient(d: Buffer): void {
    this.proxy.stats.clientChunks++;
    this.proxy.stats.clientBytes += d.length;
    if (this.dead) return;
    if (this.passthrough) {
      this.toServer([d]);
      return;
    }
    this.queue.push(d);
    while (!this.dead && !this.passthrough && this.queue.length >= 4) {
      const len = this.queue.peek(0) | (this.queue.peek(1) << 8) | (this.queue.peek(2) << 16);
      const seq = this.queue.peek(3);
      if (this.queue.length < 4 + len) break;
      const piece = this.queue.take(4 + len);
      if (this.firstSeq < 0) this.firstSeq = seq;
      this.raw.push(...piece);
      // The payload is the piece minus its 4-byte header (which may straddle chunks).
      let skip = 4;
      for (const b of piece) {
        if (skip >= b.length) {
          skip -= b.length;
          continue;
        }
        this.payload.push(skip ? b.subarray(skip) : b);
        skip = 0;
      }
      this.payloadBytes += len;
      if (len === MAX_PIECE) continue; // more pieces of this logical packet follow
      this.onPacket();
    }
    if (this.passthrough && !this.dead && this.queue.length > 0) this.toServer(this.queue.takeAll());
  }

  private onPacket(): void {
    const raw = this.raw;
    const payload = this.payload.length === 1 ? this.payload[0] : Buffer.concat(this.payload, this.payloadBytes);
    const seq = this.firstSeq;
    this.raw = [];
    this.payload = [];
    this.payloadBytes = 0;
    this.firstSeq = -1;
    const first = this.packetsSeen++ === 0;

    if (first) {
      // SSL request (32 bytes, CLIENT_SSL) or a handshake response asking for compression: from here
      // on the stream is TLS or compressed frames, which this proxy does not look into.
      const flags = payload.length >= 4 ? payload.readUInt32LE(0) : 0;
      if (flags & (CLIENT_SSL | CLIENT_COMPRESS)) this.passthrough = true;
      this.toServer(raw);
      return;
    }
    if (seq !== 0 || payload.length === 0 || payload[0] !== COM_QUERY) {
      this.toServer(raw);
      return;
    }
    const sql = payload.toString('utf8', 1);
    const info: QueryInfo = { connection: this.id, index: this.queryIndex++, bytes: payload.length };
    const record = this.proxy._record(info, sql);
    const armed = this.proxy._decide(sql, info);
    if (!armed) {
      this.toServer(raw);
      return;
    }
    const when = armed.rule.when;
    if (record) record.cut = when;
    this.dead = true; // from now on nothing more goes either way on this connection
    const event: CutEvent = { when, sql, connection: this.id, cut: this.proxy._countCut(), matched: armed.matched };
    // The client is cut now, so no reply can reach it. The server socket is destroyed once what was
    // forwarded before (and, for 'after', this packet) is handed to the kernel: destroying at once
    // would discard writes still queued in Node.
    this.client.destroy();
    let finished = false;
    const finish = (): void => {
      if (finished) return;
      finished = true;
      this.server.destroy();
      this.proxy._fire(armed, event);
    };
    this.server.once('close', finish);
    this.toServer(when === 'after' ? raw : [Buffer.alloc(0)], finish);
  }
}

export class CuttingProxy {
  /** Cuts made so far. */
  cuts = 0;
  /** Connections accepted so far. */
  accepted = 0;
  /** TCP chunks and bytes received from clients and from the server (all connections, dropped ones included). */
  readonly stats = { clientChunks: 0, clientBytes: 0, serverChunks: 0, serverBytes: 0 };
  /** The last `recordQueries` COM_QUERY packets seen (all connections), oldest first. */
  readonly queries: RecordedQuery[] = [];

  private readonly conns = new Set<ProxiedConnection>();
  private readonly rules: Armed[] = [];
  private closing: Promise<void> | null = null;

  private constructor(
    private readonly server: net.Server,
    readonly port: number,
    readonly host: string,
    private readonly options: CuttingProxyOptions,
  ) {}

  static async start(options: CuttingProxyOptions): Promise<CuttingProxy> {
    const host = options.host ?? '127.0.0.1';
    const server = net.createServer({ noDelay: true });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port ?? 0, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const port = (server.address() as net.AddressInfo).port;
    const proxy = new CuttingProxy(server, port, host, options);
    server.on('connection', (client) => proxy.accept(client));
    return proxy;
  }

  /** `mysql://<user>@<host>:<port>/<database>` pointing at the proxy. */
  url(database = 'test'): string {
    return `mysql://${this.options.user ?? 'root'}@${this.host}:${this.port}/${database}`;
  }

  /** Connections currently proxied. */
  get open(): number {
    return this.conns.size;
  }

  /**
   * Arm one rule: the first COM_QUERY packet (on any connection) that it matches, after `skip`, is cut
   * at. Rules are tried in the order armed; at most one cut per packet. Resolves after the cut (both
   * sockets destroyed); rejects if disarmed or the proxy closes first.
   */
  cutOnce(rule: CutRule): ArmedCut {
    if (rule.when !== 'before' && rule.when !== 'after') throw new Error(`cutOnce: when must be 'before' or 'after'`);
    const skip = rule.nth !== undefined ? rule.nth - 1 : (rule.skip ?? 0);
    if (!Number.isInteger(skip) || skip < 0) throw new Error(`cutOnce: skip/nth out of range`);
    let resolve!: (e: CutEvent) => void;
    let reject!: (e: Error) => void;
    const promise = new Promise<CutEvent>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => undefined); // a rule never hit must not become an unhandled rejection
    const armed: Armed = { rule, skip, matched: 0, settled: false, resolve, reject };
    if (this.closing) {
      armed.settled = true;
      reject(new Error('CuttingProxy is closed'));
    } else {
      this.rules.push(armed);
    }
    return Object.defineProperties(promise, {
      disarm: { value: () => this.settle(armed, new Error('cut disarmed')) },
      matched: { get: () => armed.matched },
      fired: { get: () => armed.settled && armed.matched > armed.skip },
    }) as ArmedCut;
  }

  /** Arm several rules at once (same as calling `cutOnce` for each, in order). */
  cutEach(rules: CutRule[]): ArmedCut[] {
    return rules.map((r) => this.cutOnce(r));
  }

  /** Disarm every rule not fired yet. */
  disarmAll(): void {
    for (const a of [...this.rules]) this.settle(a, new Error('cut disarmed'));
  }

  /** Drop every proxied connection now (the listener stays open). */
  dropAll(): void {
    for (const c of this.conns) c.kill();
  }

  /** Close the listener and every proxied socket; resolves once all of them are closed. */
  close(): Promise<void> {
    if (!this.closing) {
      this.disarmAll();
      const listener = new Promise<void>((r) => this.server.close(() => r()));
      const conns = [...this.conns].map((c) => c.closed);
      this.dropAll();
      this.closing = Promise.all([listener, ...conns]).then(() => undefined);
    }
    return this.closing;
  }

  private accept(client: net.Socket): void {
    if (this.closing) {
      client.destroy();
      return;
    }
    client.setNoDelay(true);
    const upstream = net.connect({ host: this.options.target.host, port: this.options.target.port, noDelay: true });
    const conn = new ProxiedConnection(++this.accepted, client, upstream, this);
    this.conns.add(conn);
    void conn.closed.then(() => this.conns.delete(conn));
  }

  private settle(a: Armed, err: Error): void {
    if (a.settled) return;
    a.settled = true;
    const i = this.rules.indexOf(a);
    if (i >= 0) this.rules.splice(i, 1);
    a.reject(err);
  }

  /** @internal */
  _record(info: QueryInfo, sql: string): RecordedQuery | undefined {
    const limit = this.options.recordQueries ?? 200;
    if (limit <= 0) return undefined;
    const max = this.options.maxRecordedSql ?? 2000;
    const rec: RecordedQuery = { ...info, sql: sql.length > max ? `${sql.slice(0, max)}…` : sql };
    this.queries.push(rec);
    if (this.queries.length > limit) this.queries.splice(0, this.queries.length - limit);
    return rec;
  }

  /** @internal Which armed rule, if any, cuts at this packet; it is taken out of the list. */
  _decide(sql: string, info: QueryInfo): Armed | undefined {
    for (const a of this.rules) {
      if (!a.rule.match(sql, info)) continue;
      a.matched++;
      if (a.matched > a.skip) {
        this.rules.splice(this.rules.indexOf(a), 1);
        return a;
      }
    }
    return undefined;
  }

  /** @internal */
  _countCut(): number {
    return ++this.cuts;
  }

  /** @internal */
  _fire(a: Armed, e: CutEvent): void {
    a.settled = true;
    a.resolve(e);
  }
}
