import { WorkflowConfigError } from '../errors/workflow-config.error.js';
import { MESSAGES } from '../workflow.messages.js';
import { DEFAULT_DASHBOARD_PATH } from './workflow-dashboard.constants.js';
import type { WorkflowDashboardOptions } from './workflow-dashboard-options.interface.js';

export interface ResolvedDashboardConfig {
  path: string;
  readOnly: boolean;
  guarded: boolean;
}

/** '/workflows', 'admin/runs/' -> '/admin/runs'; undefined when it cannot be a route path. */
export function normalizePath(path: unknown): string | undefined {
  if (path === undefined) return DEFAULT_DASHBOARD_PATH;
  if (typeof path !== 'string') return undefined;
  const trimmed = path.replace(/^\/+|\/+$/g, '');
  // Route parameters and wildcards would turn the dashboard into a catch-all.
  if (!/^[A-Za-z0-9._~-]+(\/[A-Za-z0-9._~-]+)*$/.test(trimmed)) return undefined;
  return `/${trimmed}`;
}

export function resolveDashboardConfig(options: WorkflowDashboardOptions): ResolvedDashboardConfig {
  const path = normalizePath(options.path);
  if (!path) throw new WorkflowConfigError(MESSAGES.dashboardPath(options.path));
  const guards = options.guards ?? [];
  if (!Array.isArray(guards) || guards.some((g) => typeof g !== 'function')) {
    throw new WorkflowConfigError(MESSAGES.dashboardGuards());
  }
  if (guards.length === 0 && options.allowUnauthenticated !== true) {
    throw new WorkflowConfigError(MESSAGES.dashboardUnguarded(path));
  }
  return { path, readOnly: options.readOnly === true, guarded: guards.length > 0 };
}
