import type { CanActivate, ModuleMetadata, Type } from '@nestjs/common';

export interface WorkflowDashboardOptions {
  /** Where the page and its API (`<path>/api/...`) are mounted; default '/workflows'. */
  path?: string;
  /** Run before every route of the dashboard, page and API alike; resolved by Nest's DI. */
  guards?: Type<CanActivate>[];
  /** Serve without guards: only for a local tool or a network you trust. */
  allowUnauthenticated?: boolean;
  /** Hide the actions (cancel, retry, signal) in the page and refuse them in the API (403). */
  readOnly?: boolean;
  /** Modules whose providers the guards inject (an AuthModule that is not global). */
  imports?: ModuleMetadata['imports'];
}
