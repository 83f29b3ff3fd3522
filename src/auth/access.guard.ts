import {
  Inject,
  Injectable,
  Logger,
  type CanActivate,
  type ExecutionContext,
} from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import type { FastifyRequest } from 'fastify';
import type { IncomingMessage } from 'node:http';
import { ACCESS_METADATA, type AccessLevel, type Permission } from '../common/access';
import { ForbiddenError, UnauthorizedError } from '../common/errors';
import { APP_CONFIG, type AppConfig } from '../config/app-config';
import { MetricsService, type AuthRefusal } from '../metrics/metrics.service';
import { TokenService, type GrantedToken, type TokenCheck } from './token.service';

/** The token each request was let in with (for the handlers' logs). */
const granted = new WeakMap<IncomingMessage, GrantedToken>();

/** The name of the token `request` was let in with, or null (no token was needed). */
export function tokenNameOf(request: FastifyRequest): string | null {
  return granted.get(request.raw)?.name ?? null;
}

/**
 * Lets a request through only with a token that has the permission its route needs (see Access).
 * The upload, delete and pin controllers use it as their guard; reads (and /metrics) are checked by
 * ReadTokenHook with the same `admit`, before Nest, where it costs least.
 *
 * No token, or one that is not valid (unknown, revoked, expired) → UnauthorizedError (401 with a
 * Basic challenge: a browser then asks for it; Nix sends it from its netrc file); a valid token
 * without the permission → ForbiddenError (403). Either way before the handler runs: a refused
 * request never reaches storage or upstreams.
 */
@Injectable()
export class AccessGuard implements CanActivate {
  private readonly logger = new Logger('auth');
  private readonly levels = new WeakMap<object, AccessLevel>();

  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    private readonly reflector: Reflector,
    private readonly tokens: TokenService,
    private readonly metrics: MetricsService,
  ) {}

  canActivate(context: ExecutionContext): true | Promise<true> {
    const level = this.levelOf(context);
    if (level === 'public') return true;
    return this.admit(context.switchToHttp().getRequest<FastifyRequest>(), level);
  }

  /** Whether a route that needs `level` asks for a token, with these settings. */
  needsToken(level: AccessLevel): boolean {
    switch (level) {
      case 'public':
        return false;
      case 'read':
        return this.config.access.requireReadToken;
      case 'metrics':
        return this.config.access.metricsRequireToken;
      default:
        return true; // write, delete, pin
    }
  }

  /**
   * Resolves (at once, when the instance knows the token) if the request may do what `level`
   * allows; throws UnauthorizedError or ForbiddenError otherwise, logged and counted.
   */
  admit(request: FastifyRequest, level: Permission): true | Promise<true> {
    if (!this.needsToken(level)) return true;
    const check = this.tokens.authenticate(request.headers.authorization);
    return check instanceof Promise
      ? check.then((c) => this.decide(request, level, c))
      : this.decide(request, level, check);
  }

  /**
   * Whether a read with this Authorization header may be answered at once, without a word: no token
   * needed, or a token this instance knows to be valid with the read permission (the front door's
   * check, see FrontDoor). False says nothing: the full check (admit) then decides, logs and counts.
   */
  admitsReadAtOnce(authorization: string | undefined): boolean {
    if (!this.needsToken('read')) return true;
    const check = this.tokens.authenticate(authorization);
    if (check instanceof Promise) {
      check.catch(() => undefined); // looked up again by the full check, which reports a failure
      return false;
    }
    return check.kind === 'valid' && check.token.permissions.has('read');
  }

  private decide(request: FastifyRequest, level: Permission, check: TokenCheck): true {
    if (check.kind === 'none') {
      this.refused(request, level, 'unauthorized', 'no token');
      throw new UnauthorizedError(
        'a token is needed: the password of HTTP Basic auth (a netrc file) or a Bearer token',
      );
    }
    if (check.kind === 'invalid') {
      const name = check.name ? ` "${check.name}"` : '';
      this.refused(request, level, 'unauthorized', `${check.why} token${name}`);
      throw new UnauthorizedError('the token is not valid (unknown, revoked or expired)');
    }
    const { token } = check;
    if (!token.permissions.has(level)) {
      const why = `token "${token.name}" lacks the ${level} permission`;
      this.refused(request, level, 'forbidden', why);
      throw new ForbiddenError(why);
    }
    // Handlers of writes, deletes and pins log the token's name; reads need not remember it.
    if (level !== 'read') granted.set(request.raw, token);
    return true;
  }

  /** The route's level (a handler's own, else its controller's, else `read`), looked up once. */
  private levelOf(context: ExecutionContext): AccessLevel {
    const handler = context.getHandler();
    let level = this.levels.get(handler);
    if (level === undefined) {
      level =
        this.reflector.getAllAndOverride<AccessLevel | undefined>(ACCESS_METADATA, [
          handler,
          context.getClass(),
        ]) ?? 'read';
      this.levels.set(handler, level);
    }
    return level;
  }

  private refused(
    request: FastifyRequest,
    level: Permission,
    reason: AuthRefusal,
    why: string,
  ): void {
    this.metrics.authRefused(reason, level);
    const line = `refused ${request.method} ${request.url} (needs ${level}): ${why}`;
    if (level === 'read' || level === 'metrics') this.logger.log(line);
    else this.logger.warn(line);
  }
}
