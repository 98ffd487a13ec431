import { type CanActivate, type ExecutionContext, ForbiddenException, Inject, Injectable } from '@nestjs/common';
import { ACTION_HEADER, DASHBOARD_OPTIONS } from './workflow-dashboard.constants.js';
import type { ResolvedDashboardConfig } from './workflow-dashboard.config.js';

type Headers = Record<string, string | string[] | undefined>;

/**
 * Guards the dashboard's POSTs, after the user's own guards: refused with `readOnly`, and
 * refused unless the request plainly comes from the dashboard's own page. The session
 * cookie an auth guard trusts is sent with cross-site requests too, so authentication
 * alone does not stop another site from making an admin's browser cancel runs.
 */
@Injectable()
export class DashboardActionGuard implements CanActivate {
  constructor(@Inject(DASHBOARD_OPTIONS) private readonly config: ResolvedDashboardConfig) {}

  canActivate(context: ExecutionContext): boolean {
    if (this.config.readOnly) throw new ForbiddenException('The workflow dashboard is read-only.');
    // Express and Fastify requests both carry lower-cased `headers`.
    const headers: Headers = context.switchToHttp().getRequest().headers ?? {};
    const refusal = crossSiteRefusal(headers);
    if (refusal) throw new ForbiddenException(refusal);
    return true;
  }
}

function header(headers: Headers, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** Why a request may not be an action of the dashboard's own page, or undefined. */
export function crossSiteRefusal(headers: Headers): string | undefined {
  // Sent by every current browser; 'same-site' is refused too: a sibling subdomain is another app.
  const site = header(headers, 'sec-fetch-site');
  if (site !== undefined && site !== 'same-origin' && site !== 'none') return `Refused a ${site} request.`;
  const origin = header(headers, 'origin');
  if (origin !== undefined) {
    let originHost: string;
    try {
      originHost = new URL(origin).host;
    } catch {
      return 'Refused a request from an opaque origin.';
    }
    // Behind a proxy that rewrites Host, the browser's host is the forwarded one.
    const hosts = [header(headers, 'host'), header(headers, 'x-forwarded-host')];
    if (!hosts.includes(originHost)) return `Refused a request from origin ${origin}.`;
  }
  if (header(headers, ACTION_HEADER) !== '1') return `Actions need the header ${ACTION_HEADER}: 1.`;
  return undefined;
}
