import type { ModuleRef } from '@nestjs/core';

/** What a terminus `HealthIndicatorSession` offers, and all the indicator uses of it. */
export interface HealthSession {
  up(data: Record<string, unknown>): Record<string, unknown>;
  down(data: Record<string, unknown>): Record<string, unknown>;
}

interface HealthIndicatorServiceLike {
  check(key: string): HealthSession;
}

type Terminus = { HealthIndicatorService?: new () => HealthIndicatorServiceLike };

let loading: Promise<Terminus | null> | undefined;

/** `@nestjs/terminus`, an optional peer dependency, imported on the first health check. */
function loadTerminus(): Promise<Terminus | null> {
  loading ??= import('@nestjs/terminus').then(
    (m) => m as unknown as Terminus,
    () => null,
  );
  return loading;
}

/**
 * The session that builds `key`'s result, as terminus 11 and later want custom
 * indicators to: `HealthIndicatorService.check(key)` (the application's instance when
 * it imports TerminusModule). Without terminus (or before v11), a session that builds
 * the same `{ [key]: { status, ...data } }` objects.
 */
export async function healthSession(moduleRef: ModuleRef, key: string): Promise<HealthSession> {
  const terminus = await loadTerminus();
  const Service = terminus?.HealthIndicatorService;
  if (Service) {
    let service: HealthIndicatorServiceLike;
    try {
      service = moduleRef.get(Service, { strict: false });
    } catch {
      service = new Service();
    }
    return service.check(key);
  }
  return {
    up: (data) => ({ [key]: { status: 'up', ...data } }),
    down: (data) => ({ [key]: { status: 'down', ...data } }),
  };
}
