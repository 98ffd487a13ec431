import { readFile } from 'node:fs/promises';

/** The page's files, read once at startup from beside this module (copied into dist/ by the build). */
export interface DashboardAssets {
  html: string;
  js: string;
  css: string;
}

export const DASHBOARD_ASSETS = Symbol('WORKFLOW_DASHBOARD_ASSETS');

export async function loadDashboardAssets(): Promise<DashboardAssets> {
  const dir = new URL('./assets/', import.meta.url);
  const [html, js, css] = await Promise.all(
    ['dashboard.html', 'dashboard.js', 'dashboard.css'].map((f) => readFile(new URL(f, dir), 'utf8')),
  );
  return { html, js, css };
}

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
const escapeAttr = (s: string) => s.replace(/[&<>"']/g, (c) => ESCAPES[c]);

/**
 * The page for a request to `requestPath`. Asset links are relative to it, so the page
 * works under a global prefix or a proxy's sub-path, with or without a trailing slash.
 */
export function renderPage(assets: DashboardAssets, requestPath: string, readOnly: boolean): string {
  const path = requestPath.split('?')[0];
  const base = path.endsWith('/') ? './' : `./${path.slice(path.lastIndexOf('/') + 1)}/`;
  return assets.html.replaceAll('{{base}}', escapeAttr(base)).replaceAll('{{readOnly}}', readOnly ? 'true' : 'false');
}
