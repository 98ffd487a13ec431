/** The dashboard's decisions that need no server: which requests may act, which paths it mounts at. */
import { WorkflowConfigError } from 'nestjs-durable-workflow';
import { crossSiteRefusal } from '../../lib/dashboard/dashboard-action.guard.js';
import { renderPage } from '../../lib/dashboard/dashboard.assets.js';
import { normalizePath, resolveDashboardConfig } from '../../lib/dashboard/workflow-dashboard.config.js';
import { MESSAGES } from '../../lib/workflow.messages.js';

describe('dashboard actions: crossSiteRefusal', () => {
  const own = { host: 'ops.example:3000', 'x-workflow-dashboard': '1' };

  it("lets the page's own requests through", () => {
    expect(crossSiteRefusal(own)).toBeUndefined();
    expect(
      crossSiteRefusal({ ...own, 'sec-fetch-site': 'same-origin', origin: 'https://ops.example:3000' }),
    ).toBeUndefined();
    // Behind a proxy that rewrote Host.
    expect(
      crossSiteRefusal({ ...own, host: 'app:3000', 'x-forwarded-host': 'ops.example', origin: 'https://ops.example' }),
    ).toBeUndefined();
  });

  it('refuses requests without the header, from another site, or from an opaque origin', () => {
    expect(crossSiteRefusal({ host: own.host })).toBe('Actions need the header x-workflow-dashboard: 1.');
    expect(crossSiteRefusal({ ...own, 'x-workflow-dashboard': 'true' })).toMatch(/need the header/);
    expect(crossSiteRefusal({ ...own, 'sec-fetch-site': 'cross-site' })).toBe('Refused a cross-site request.');
    expect(crossSiteRefusal({ ...own, 'sec-fetch-site': 'same-site' })).toBe('Refused a same-site request.');
    expect(crossSiteRefusal({ ...own, origin: 'https://evil.example' })).toBe(
      'Refused a request from origin https://evil.example.',
    );
    expect(crossSiteRefusal({ ...own, origin: 'http://ops.example:3001' })).toMatch(/from origin/);
    expect(crossSiteRefusal({ ...own, origin: 'null' })).toBe('Refused a request from an opaque origin.');
  });
});

describe('dashboard options', () => {
  it('normalizes the path, and refuses one that is not a plain route', () => {
    expect(normalizePath(undefined)).toBe('/workflows');
    expect(normalizePath('admin/runs/')).toBe('/admin/runs');
    expect(normalizePath('/ops')).toBe('/ops');
    for (const bad of ['', '/', '/runs/:id', '/runs/*', 'a b', 42]) expect(normalizePath(bad)).toBeUndefined();
  });

  it('needs guards or allowUnauthenticated: true', () => {
    const config = (o: object) => () => resolveDashboardConfig(o);
    expect(config({})).toThrow(new WorkflowConfigError(MESSAGES.dashboardUnguarded('/workflows')));
    expect(config({ path: '/ops', allowUnauthenticated: 'yes' })).toThrow(MESSAGES.dashboardUnguarded('/ops'));
    expect(config({ guards: [42] })).toThrow(MESSAGES.dashboardGuards());
    expect(config({ path: '/x/:y', allowUnauthenticated: true })).toThrow(MESSAGES.dashboardPath('/x/:y'));
    expect(resolveDashboardConfig({ guards: [class Guard {}] as any, readOnly: true })).toEqual({
      path: '/workflows',
      readOnly: true,
      guarded: true,
    });
  });
});

describe('dashboard page', () => {
  const assets = {
    html: '<script src="{{base}}assets/dashboard.js" data-ro="{{readOnly}}"></script>',
    js: '',
    css: '',
  };

  it('links its files relative to the address it was opened at', () => {
    expect(renderPage(assets, '/workflows', false)).toBe(
      '<script src="./workflows/assets/dashboard.js" data-ro="false"></script>',
    );
    expect(renderPage(assets, '/api/ops/runs/?refresh=2', true)).toBe(
      '<script src="./assets/dashboard.js" data-ro="true"></script>',
    );
  });
});
