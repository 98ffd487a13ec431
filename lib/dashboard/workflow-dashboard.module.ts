import { type DynamicModule, Module } from '@nestjs/common';
import { DashboardActionGuard } from './dashboard-action.guard.js';
import { DASHBOARD_ASSETS, loadDashboardAssets } from './dashboard.assets.js';
import { DASHBOARD_OPTIONS, DEFAULT_DASHBOARD_PATH } from './workflow-dashboard.constants.js';
import { normalizePath, resolveDashboardConfig } from './workflow-dashboard.config.js';
import { createDashboardController } from './workflow-dashboard.controller.js';
import type { WorkflowDashboardOptions } from './workflow-dashboard-options.interface.js';

/**
 * A page and its JSON API on the app's own HTTP server, for the runs of the app's
 * (global) WorkflowModule:
 *
 *   WorkflowDashboardModule.forRoot({ path: '/admin/workflows', guards: [AdminGuard] })
 *
 * Without `guards` or `allowUnauthenticated: true` the app does not start
 * (WorkflowConfigError): it never serves run data to anyone by default.
 */
@Module({})
export class WorkflowDashboardModule {
  static forRoot(options: WorkflowDashboardOptions = {}): DynamicModule {
    // Bad options still get a controller here; the options provider refuses them at startup, with a message.
    const guards = Array.isArray(options.guards) ? options.guards.filter((g) => typeof g === 'function') : [];
    const controller = createDashboardController(normalizePath(options.path) ?? DEFAULT_DASHBOARD_PATH, guards);
    return {
      module: WorkflowDashboardModule,
      imports: options.imports ?? [],
      controllers: [controller],
      providers: [
        { provide: DASHBOARD_OPTIONS, useFactory: () => resolveDashboardConfig(options) },
        { provide: DASHBOARD_ASSETS, useFactory: loadDashboardAssets },
        DashboardActionGuard,
      ],
    };
  }
}
