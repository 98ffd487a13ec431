import type { SslOptions } from 'mysql2';
import { WorkflowConfigError } from '../errors/workflow-config.error.js';
import type { WorkflowConnectionOptions } from '../interfaces/workflow-module-options.interface.js';
import { DEFAULTS } from '../workflow.constants.js';

/** Where and how the module's own pool connects, `connection.url` and the fields merged. */
export interface ConnectionTarget {
  host: string;
  port: number;
  username?: string;
  password?: string;
  database?: string;
  /** As mysql2 takes it: an SslOptions object, or the name of one of its SSL profiles. */
  ssl?: string | SslOptions;
  poolSize: number;
  /** URL query parameters other than `ssl`, which the module does not pass on. */
  ignoredParams: string[];
}

/**
 * Parses `connection` the way its documentation says: the fields override the parts of
 * `url`. Parsed here rather than by TypeORM, whose URL parser drops the query string
 * (so `?ssl=...` would silently connect in clear text) and lets the URL override the fields.
 */
export function connectionTarget(c: WorkflowConnectionOptions): ConnectionTarget {
  if (typeof c !== 'object' || c === null) {
    throw new WorkflowConfigError(
      'WorkflowModule: `connection` must be an object ({ url } or host/port/username/password/database).',
    );
  }
  const rawUrl = c.url;
  if (rawUrl !== undefined && rawUrl !== null && typeof rawUrl !== 'string') {
    throw new WorkflowConfigError(`WorkflowModule: connection.url must be a string, got ${typeof rawUrl}.`);
  }
  const hasUrl = typeof rawUrl === 'string' && rawUrl.trim() !== '';
  if (!hasUrl && (c.host === undefined || c.host === null || c.host === '')) {
    throw new WorkflowConfigError(
      `WorkflowModule: connection.url is ${rawUrl === '' ? 'empty' : 'not set'} and no connection.host is given ` +
        '(is the environment variable that should hold the URL unset?). Set connection.url to ' +
        'mysql://user:password@host:3306/database, or give connection.host and connection.database.',
    );
  }
  let url: URL | undefined;
  if (hasUrl) {
    try {
      url = new URL(rawUrl!.trim());
    } catch {
      throw new WorkflowConfigError(
        `WorkflowModule: connection.url is not a valid URL (${redact(rawUrl!)}); expected mysql://user:password@host:3306/database.`,
      );
    }
    if (url.protocol !== 'mysql:' && url.protocol !== 'mariadb:') {
      throw new WorkflowConfigError(
        `WorkflowModule: connection.url must start with mysql:// or mariadb://, got ${url.protocol}// (${redact(rawUrl!)}).`,
      );
    }
  }
  const fromUrl = (s: string | undefined) => (s ? decodeURIComponent(s) : undefined);
  const urlHost = url?.hostname.replace(/^\[(.*)\]$/, '$1') || undefined;
  const urlPort = url?.port ? Number.parseInt(url.port, 10) : undefined;
  const port = c.port ?? urlPort ?? 3306;
  if (!Number.isSafeInteger(port) || port < 1 || port > 65535) {
    throw new WorkflowConfigError(
      `WorkflowModule: connection.port must be an integer from 1 to 65535, got ${JSON.stringify(port)}.`,
    );
  }
  const ignoredParams: string[] = [];
  let urlSsl: string | SslOptions | undefined;
  for (const [key, value] of url?.searchParams ?? []) {
    if (key === 'ssl') urlSsl = sslFromUrl(value);
    else ignoredParams.push(key);
  }
  return {
    host: c.host || urlHost || '127.0.0.1',
    port,
    // Without a URL, the historical default account; a URL without a user means no user.
    username: c.username ?? (url ? fromUrl(url.username) : 'root'),
    password: c.password ?? fromUrl(url?.password),
    database: c.database || fromUrl(url?.pathname.replace(/^\//, '')) || undefined,
    ssl: c.ssl !== undefined ? sslOption(c.ssl) : urlSsl,
    poolSize: c.poolSize ?? DEFAULTS.poolSize,
    ignoredParams,
  };
}

/** `?ssl=true` (or `1`, or bare `?ssl`): TLS verified against Node's CAs; `false`/`0`: none; `{...}`: mysql2's JSON form; else a profile name. */
function sslFromUrl(value: string): string | SslOptions | undefined {
  const v = value.trim();
  if (v === '' || v === 'true' || v === '1') return {};
  if (v === 'false' || v === '0') return undefined;
  if (v.startsWith('{')) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(v);
    } catch (err) {
      throw new WorkflowConfigError(
        `WorkflowModule: the ssl parameter of connection.url is not valid JSON (${(err as Error).message}).`,
      );
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      throw new WorkflowConfigError(
        'WorkflowModule: the ssl parameter of connection.url must be a JSON object, true, false or a profile name.',
      );
    }
    return parsed as SslOptions;
  }
  return v;
}

function sslOption(value: unknown): string | SslOptions | undefined {
  // mysql2 refuses a boolean; `true` reads naturally as "TLS, verified".
  if (value === true) return {};
  if (value === false || value === null) return undefined;
  if (typeof value === 'string' || (typeof value === 'object' && !Array.isArray(value)))
    return value as string | SslOptions;
  throw new WorkflowConfigError(
    `WorkflowModule: connection.ssl must be an SslOptions object (e.g. { ca }), true, or an SSL profile name; got ${typeof value}.`,
  );
}

/** The URL for an error message, password hidden. */
export function redact(url: string): string {
  return url.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@');
}
