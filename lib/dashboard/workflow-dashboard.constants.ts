export const DASHBOARD_OPTIONS = Symbol('WORKFLOW_DASHBOARD_OPTIONS');

/**
 * Every action carries it. A cross-site HTML form cannot set a header, and a cross-site
 * fetch cannot without a CORS preflight, so its presence says the page itself sent it.
 */
export const ACTION_HEADER = 'x-workflow-dashboard';

export const DEFAULT_DASHBOARD_PATH = '/workflows';

/** No inline script or style, nothing from elsewhere, no framing: run data is shown to admins. */
export const PAGE_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
