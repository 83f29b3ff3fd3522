import { SetMetadata } from '@nestjs/common';
import { RouteConfig } from '@nestjs/platform-fastify';

/**
 * What a token may allow. `read`: everything a substituter reads (narinfos, NARs, listings, logs,
 * realisations, `/nix-cache-info`, the status page); `write`: uploads; `delete`: deletes; `pin`:
 * pins; `metrics`: `GET /metrics`.
 */
export const PERMISSIONS = ['read', 'write', 'delete', 'pin', 'metrics'] as const;
export type Permission = (typeof PERMISSIONS)[number];

/** What a route needs: a permission, or nothing at all (`public`). */
export type AccessLevel = Permission | 'public';

export const ACCESS_METADATA = 'narwhal:access';

/** What a route needs, as its Fastify route config carries it (`request.routeOptions.config`). */
export interface AccessRouteConfig {
  access?: AccessLevel;
}

/**
 * Declares what a route (or every route of a controller) needs; a route without it needs `read`.
 * Whether a token is then asked for depends on the settings: `write`, `delete` and `pin` always,
 * `read` with --cache-require-read-token, `metrics` with --prometheus-require-token.
 *
 * It is recorded twice: as Nest metadata, for AccessGuard, and in each route's Fastify config
 * (`{ access }`), for the read check that runs as a Fastify hook before Nest (see ReadTokenHook).
 * On a controller it applies to every method that does not declare its own.
 */
export function Access(level: AccessLevel): ClassDecorator & MethodDecorator {
  const config: AccessRouteConfig = { access: level };
  return (target: object, key?: string | symbol, descriptor?: PropertyDescriptor) => {
    if (descriptor) {
      SetMetadata(ACCESS_METADATA, level)(target, key!, descriptor);
      RouteConfig(config)(target, key!, descriptor);
      return;
    }
    SetMetadata(ACCESS_METADATA, level)(target as never);
    const proto = (target as { prototype: object }).prototype;
    for (const name of Object.getOwnPropertyNames(proto)) {
      const method = Object.getOwnPropertyDescriptor(proto, name);
      if (name === 'constructor' || typeof method?.value !== 'function') continue;
      // Method decorators ran first: a method's own level wins.
      if (!Reflect.hasOwnMetadata(ACCESS_METADATA, method.value as object)) {
        RouteConfig(config)(proto, name, method);
      }
    }
  };
}

export function isPermission(s: string): s is Permission {
  return (PERMISSIONS as readonly string[]).includes(s);
}
