import { randomUUID } from 'node:crypto';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import { asyncContext } from './async-context';

/** What a hot route answers with: the whole body and the headers that go with it. */
export interface HotAnswer {
  body: Buffer;
  /** Header names and values, flat: `[name, value, name, value, …]`. */
  headers: readonly string[];
}

/**
 * A stored file the fast lane may send with sendfile(2) (a large NAR served lately): its size, the
 * headers that go with it, and how to open it.
 */
export interface HotFile {
  size: number;
  /** Header names and values, flat, as in HotAnswer. */
  headers: readonly string[];
  /**
   * Opens the file for sending; undefined when it cannot be sent from here now (no free sendfile
   * slot, gone from storage): the request then goes to node:http. Opening counts the hit.
   */
  open(): Promise<OpenHotFile | undefined>;
}

/** A HotFile opened for sending. */
export interface OpenHotFile {
  /**
   * Copies the whole file to the socket with descriptor `socketFd` (nothing of the answer may be
   * queued in Node), counting what was sent; stops when `signal` aborts. `failed` says why it
   * stopped short (a client that took nothing for too long is counted and logged as stalled).
   */
  send(socketFd: number, signal: AbortSignal): Promise<{ sent: number; failed?: string }>;
  /** Closes the file and frees its sendfile slot (after sending, or instead). */
  close(): Promise<void>;
}

/** A route the front door may answer: a Fastify route pattern (for metrics) and a lookup by URL. */
export interface HotRoute {
  /** The Fastify route the same request would reach (`/:file`, `/nar/:name`): the metrics label. */
  route: string;
  /**
   * The answer for this raw request URL when it is at hand in memory, else undefined (the request
   * goes on to Fastify and Nest). Called only for GETs without a Range header that the read-token
   * check admitted; a lookup that answers counts its own hit.
   */
  answer(url: string): HotAnswer | undefined;
  /**
   * Whether a HEAD of this route may be answered with the GET answer's headers (the fast lane
   * does): true when `answer` does nothing a HEAD through the controller would not do too.
   */
  head?: boolean;
  /**
   * A stored file to send for a GET of this URL (the fast lane only, and only where sendfile can
   * send it), else undefined. Called when `answer` found nothing; it must decide from memory.
   */
  file?(url: string): HotFile | undefined;
}

/**
 * A route the front door answers itself when nothing is in memory either: a narinfo or NAR lookup
 * that may ask the database, take a lock and go to the upstreams. What it saves is Fastify's request
 * and reply objects, their hooks and Nest's route pipeline, for the requests a cold `nix copy` makes
 * by the hundred; anything it does not take goes to Fastify as before.
 */
export interface ColdRoute {
  /** The Fastify route the same request would reach: the metrics label. */
  route: string;
  /**
   * Whether the door takes this request (a GET, or a HEAD), from its raw URL alone and at once: a
   * URL Fastify would decode or route differently (a query, a `%` escape, a deeper path) is not
   * taken. Called only for requests without a Range header that the read-token check admitted.
   */
  takes(method: 'GET' | 'HEAD', url: string): boolean;
  /**
   * Answers the request: sets the status and headers of `res`, writes the body and ends it. Rejects
   * before writing anything with an error to be answered as the controller's would be (see
   * ErrorAnswers); once the head is written, a failure destroys `res` instead (no clean end for a
   * broken body). Runs in the request's context (its id in log lines).
   */
  serve(method: 'GET' | 'HEAD', url: string, res: ServerResponse): Promise<void>;
}

/** An error as an HTTP answer: the status, its headers (flat, as in HotAnswer) and a text body. */
export interface ErrorAnswer {
  status: number;
  headers: readonly string[];
  body: string;
}

/**
 * Turns an error a ColdRoute rejected with into the answer Nest's exception filter would give it (a
 * 404, a 400, a 503 while the database is down; logged when it is a 500).
 */
export type ErrorAnswers = (error: unknown) => ErrorAnswer;

/** How the front door's answers are logged and counted, the same as Fastify's hooks do. */
export interface FrontDoorObservers {
  /** One access line (see installRequestLogging): completed false when the connection was cut. */
  accessLine?(
    reqId: string,
    url: string,
    ms: number,
    completed: boolean,
    method?: string,
    status?: number,
  ): void;
  /** The HTTP metrics' per-response count (see HttpMetrics). */
  response?(route: string, method: string, status: number, seconds: number): void;
}

/**
 * The read-token check of a hot answer: true only when the request may be answered at once (no
 * token needed, or a known valid token with the read permission). Anything else — no token, a bad
 * one, a token the instance must first look up — goes on to Fastify's hook, which decides, answers
 * 401/403/503, logs and counts.
 */
export type ReadAdmission = (authorization: string | undefined) => boolean;

/**
 * A hot answer for the fast lane (the bytes, or a file to send), and what `answered` needs to log
 * and count it.
 */
export type LaneAnswer = {
  route: string;
  method: 'GET' | 'HEAD';
  reqId: string;
  start: number;
} & ({ hot: HotAnswer; file?: undefined } | { hot?: undefined; file: HotFile });

const doors = new WeakMap<Server, FrontDoor>();

/**
 * Answers the hottest requests — a narinfo or a small NAR served in the last seconds, whole in
 * memory — at the node:http server, before Fastify's request object, its hooks and Nest's route
 * pipeline are built; every other request goes to Fastify unchanged.
 *
 * Under load a hit of a few hundred bytes spent most of its time in that machinery (Nest's adapter
 * alone adds six `onRequest` hooks), not in narwhal's lookup. What those hooks do for such a request
 * is done here the same way: the read-token check (ReadAdmission, installed by ReadTokenHook), the
 * `x-request-id` echo, one access line and the HTTP metrics. While the server is closing, every
 * request goes to Fastify, which answers 503 with `Connection: close`.
 */
export class FrontDoor {
  private readonly routes: HotRoute[] = [];
  private readonly coldRoutes: ColdRoute[] = [];
  private errorAnswers: ErrorAnswers | undefined;
  private observers: FrontDoorObservers = {};
  private admitRead: ReadAdmission | undefined;
  private closing = false;

  /**
   * @param requireReadToken with --cache-require-read-token the door answers nothing until a
   *   ReadAdmission is installed: a missing check never lets a read through.
   */
  constructor(
    private readonly requireReadToken: boolean,
    private readonly requestId: (req: IncomingMessage) => string,
    /** The same as `requestId`, from the `x-request-id` header's value (default: always fresh). */
    private readonly requestIdOf: (header: string | undefined) => string = () => randomUUID(),
  ) {}

  /** The front door of `server` (Nest's getHttpServer(), made by createApp), if it has one. */
  static of(server: unknown): FrontDoor | undefined {
    return doors.get(server as Server);
  }

  /** Makes this the front door of `server`: its request listener must call `answer` first. */
  attach(server: Server): void {
    doors.set(server, this);
  }

  addRoute(route: HotRoute): void {
    this.routes.push(route);
  }

  /** Takes requests of `route` from Fastify (see ColdRoute) once errors can be answered too. */
  addColdRoute(route: ColdRoute): void {
    this.coldRoutes.push(route);
  }

  /** Installs how a cold route's errors are answered (see ErrorAnswers). */
  answerErrors(answers: ErrorAnswers): void {
    this.errorAnswers = answers;
  }

  observe(observers: FrontDoorObservers): void {
    this.observers = { ...this.observers, ...observers };
  }

  /** Installs the read-token check (see ReadAdmission). */
  checkReads(admit: ReadAdmission): void {
    this.admitRead = admit;
  }

  /** From now on every request goes to Fastify (the server is closing). */
  close(): void {
    this.closing = true;
  }

  /** Whether the server is closing (every request then goes to Fastify). */
  get isClosing(): boolean {
    return this.closing;
  }

  /**
   * For the fast lane (see FastLane): the hot answer to a GET (or, where the route allows it, a
   * HEAD) of `url` without a Range header, with these `Authorization` and `x-request-id` values, or
   * undefined when it is not a hot hit (or may not be answered here: the read-token check, the
   * server closing). A hot hit is bytes in memory or, for a GET, a stored file (HotRoute.file).
   * The caller writes it, then calls `answered`.
   */
  answerRequest(
    method: 'GET' | 'HEAD',
    url: string,
    authorization: string | undefined,
    requestIdHeader: string | undefined,
  ): LaneAnswer | undefined {
    if (this.closing || this.routes.length === 0) return undefined;
    if (this.requireReadToken) {
      const admit = this.admitRead;
      if (!admit || !admit(authorization)) return undefined;
    }
    const start = performance.now();
    for (const route of this.routes) {
      if (method === 'HEAD' && !route.head) continue;
      const hot = route.answer(url);
      if (hot) {
        const reqId = this.requestIdOf(requestIdHeader);
        return { route: route.route, method, reqId, start, hot };
      }
      const file = method === 'GET' ? route.file?.(url) : undefined;
      if (file) {
        const reqId = this.requestIdOf(requestIdHeader);
        return { route: route.route, method, reqId, start, file };
      }
    }
    return undefined;
  }

  /** Logs and counts an answer of the fast lane, as `send` does for its own. */
  answered(answer: LaneAnswer, url: string, completed: boolean): void {
    const ms = performance.now() - answer.start;
    this.observers.response?.(answer.route, answer.method, 200, ms / 1000);
    this.observers.accessLine?.(answer.reqId, url, Math.round(ms), completed, answer.method);
  }

  /**
   * Answers `req` when it is a hot hit, or takes it when a cold route does (see ColdRoute), and
   * returns true; false leaves it to Fastify untouched.
   */
  answer(req: IncomingMessage, res: ServerResponse): boolean {
    if (this.closing) return false;
    const method = req.method;
    if ((method !== 'GET' && method !== 'HEAD') || req.headers.range !== undefined) return false;
    if (this.requireReadToken) {
      const admit = this.admitRead;
      if (!admit || !admit(req.headers.authorization)) return false;
    }
    const start = performance.now();
    const url = req.url ?? '';
    if (method === 'GET') {
      for (const route of this.routes) {
        const hot = route.answer(url);
        if (hot) {
          this.send(req, res, start, route.route, url, hot);
          return true;
        }
      }
    }
    if (this.errorAnswers === undefined) return false;
    for (const route of this.coldRoutes) {
      if (route.takes(method, url)) {
        this.serveCold(req, res, start, route, method, url);
        return true;
      }
    }
    return false;
  }

  /** Runs a cold route's answer, logged, counted and with its errors answered as Nest would. */
  private serveCold(
    req: IncomingMessage,
    res: ServerResponse,
    start: number,
    route: ColdRoute,
    method: 'GET' | 'HEAD',
    url: string,
  ): void {
    const reqId = this.requestId(req);
    res.setHeader('x-request-id', reqId);
    const observers = this.observers;
    let finished = false;
    res.once('finish', () => (finished = true));
    res.once('close', () => {
      const ms = performance.now() - start;
      observers.response?.(route.route, method, res.statusCode, ms / 1000);
      observers.accessLine?.(reqId, url, Math.round(ms), finished, method, res.statusCode);
    });
    const answerError = this.errorAnswers!;
    asyncContext.run({ reqId }, () => {
      route.serve(method, url, res).catch((error: unknown) => {
        if (res.headersSent || res.destroyed) {
          // Mid-body: the only honest signal left is a broken connection.
          res.destroy(error instanceof Error ? error : undefined);
          return;
        }
        const answer = answerError(error);
        const body = Buffer.from(answer.body);
        res.writeHead(answer.status, [...answer.headers, 'content-length', String(body.length)]);
        res.end(method === 'HEAD' ? undefined : body);
      });
    });
  }

  private send(
    req: IncomingMessage,
    res: ServerResponse,
    start: number,
    route: string,
    url: string,
    hot: HotAnswer,
  ): void {
    const reqId = this.requestId(req);
    res.writeHead(200, [
      'x-request-id',
      reqId,
      ...hot.headers,
      'content-length',
      String(hot.body.length),
    ]);
    res.end(hot.body);
    const observers = this.observers;
    // 'close' follows 'finish' once the whole response went to the socket, or comes alone when the
    // connection was cut first.
    let finished = false;
    res.once('finish', () => (finished = true));
    res.once('close', () => {
      const ms = performance.now() - start;
      observers.response?.(route, 'GET', 200, ms / 1000);
      observers.accessLine?.(reqId, url, Math.round(ms), finished);
    });
  }
}
