import { type CanActivate, type ExecutionContext, Injectable } from '@nestjs/common';

const LOOPBACK = new Set(['127.0.0.1', '::1', '::ffff:127.0.0.1']);

/**
 * The sample's dashboard answers only to the machine the sample runs on: it shows every
 * run's input and lets whoever sees it cancel runs. A real app passes its own auth guard
 * instead (see the README's "Dashboard"), e.g. one that checks an admin session.
 */
@Injectable()
export class LocalOnlyGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    // Express and Fastify requests both carry the Node socket, directly or as `raw`.
    const request = context.switchToHttp().getRequest();
    const address: string | undefined = (request.raw ?? request).socket?.remoteAddress;
    return address !== undefined && LOOPBACK.has(address);
  }
}
