import type { Server } from 'node:http';
import type { Socket } from 'node:net';
import type { FrontDoor, HotAnswer, HotFile, LaneAnswer, OpenHotFile } from './front-door';
import { writeSettled } from './write-settled';

/** A request head longer than this is never the fast lane's (node:http gets the connection). */
const MAX_HEAD_BYTES = 8 * 1024;
/** More unsent answer bytes than this on a connection and the lane stops reading until they drain. */
const MAX_QUEUED_BYTES = 256 * 1024;

const EMPTY = Buffer.alloc(0);
const REQUEST_LINE = /^(GET|HEAD) (\/[\x21-\x7e]*) HTTP\/1\.1$/;
/** `name: value`, a token name and visible ASCII (spaces and tabs inside) only: anything else is not ours. */
const HEADER_LINE =
  /^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?)?[ \t]*$/;

/** A stored file to send (HotRoute.file), found at the head of what a connection sent. */
interface FileRequest {
  answer: LaneAnswer & { file: HotFile };
  url: string;
  close: boolean;
  /** From this request on: what node:http gets if the lane does not send the file after all. */
  from: Buffer;
  /** The bytes after this request's head. */
  rest: Buffer;
}

type Outcome = 'closed' | { rest: Buffer | undefined; handOver: boolean } | FileRequest;

/** How sending a stored file ended (see FastLane.sendStored). */
type FileOutcome = 'sent' | 'closed' | 'not-sent' | 'gone';

/** What Node keeps on a socket without typing it. */
type InternalSocket = Socket & { _handle?: { fd?: unknown } | null };

/** The headers that matter to a hot GET, from a head the lane could read; null if it is not one. */
interface HotRequest {
  method: 'GET' | 'HEAD';
  url: string;
  authorization?: string;
  requestId?: string;
  close: boolean;
}

/**
 * Answers hot hits straight from the socket, before node:http makes a parser's request and response
 * objects for them: on this machine a bare `net` server answering a request costs well under half
 * of what a bare node:http server costs, and hot hits are most of what a fleet asks for.
 *
 * Every new connection starts in the lane. Each request whose head is a plain
 * `GET <path> HTTP/1.1` (or a HEAD, for routes that allow it: see HotRoute) with nothing the lane does not understand — no body, no Range, no Upgrade or
 * Expect, one Host, at most one Authorization, only token names and visible ASCII values — and
 * whose answer the FrontDoor has in memory (a narinfo or small NAR served lately, the read-token
 * check passed) is answered here, with the same headers, access line and metrics as the front
 * door's answer inside node:http. At the first request that is anything else (or not complete in
 * what has arrived), the connection is handed to node:http for good, with the bytes not answered
 * yet, and node:http parses them as if it had read them itself. So the lane is a strict subset of
 * HTTP/1.1: whatever it does not recognise gets node:http's full parser and error handling.
 *
 * A GET of a large NAR served lately (HotRoute.file) is answered here too, with sendfile(2): the
 * lane writes the head, the kernel copies the file, and the lane reads the connection's next request
 * only after the last byte. Nix asks for a closure's narinfos and NARs one after another on one
 * connection, so without this the first large NAR of a copy handed the connection, and every
 * request after it, to node:http. Without a free sendfile slot, or when the file is gone, the
 * request goes to node:http (nothing of its answer has been written then).
 */
export class FastLane {
  private readonly sockets = new Set<Socket>();
  /**
   * The answers of one answerAll call and their URLs, logged and counted once their bytes are
   * written (reused: cleared after each call).
   */
  private readonly written: LaneAnswer[] = [];
  private readonly writtenUrls: string[] = [];
  /** Connections sending a stored file: shutdown closes them once it is sent. */
  private readonly busy = new Set<Socket>();
  private date = '';
  private dateSecond = -1;

  constructor(
    private readonly door: FrontDoor,
    private readonly server: Server,
  ) {}

  /**
   * Puts the lane in front of `server`'s HTTP connection handling: node:http's own connection
   * listener gets a connection only when the lane hands it over.
   */
  install(): void {
    const [http] = this.server.listeners('connection') as ((socket: Socket) => void)[];
    if (!http) throw new Error('FastLane: the server has no connection listener');
    this.server.removeListener('connection', http);
    this.server.prependListener('connection', (socket: Socket) => this.accept(socket, http));
  }

  /** Connections in the lane (not handed to node:http). */
  get size(): number {
    return this.sockets.size;
  }

  /**
   * Closes every connection in the lane (for a shutdown): between requests they are idle, since the
   * lane answers a request as soon as it has it whole; answers not yet taken by the client go first.
   */
  closeIdle(): void {
    for (const socket of this.sockets) {
      if (this.busy.has(socket)) continue; // closed once its file is sent (the door is closing)
      if (socket.writableLength > 0) socket.end();
      else socket.destroy();
      this.sockets.delete(socket);
    }
  }

  private accept(socket: Socket, http: (socket: Socket) => void): void {
    if (this.door.isClosing) return http.call(this.server, socket);
    this.sockets.add(socket);
    socket.setNoDelay(true);
    const keepAlive = this.server.keepAliveTimeout;
    let pending: Buffer | undefined;
    const onTimeout = () => socket.destroy();
    const onError = () => socket.destroy();
    const onClose = () => this.sockets.delete(socket);
    const handOver = (rest: Buffer | undefined) => {
      socket.removeListener('data', onData);
      socket.removeListener('timeout', onTimeout);
      socket.removeListener('error', onError);
      socket.removeListener('close', onClose);
      socket.setTimeout(0);
      this.sockets.delete(socket);
      http.call(this.server, socket);
      socket.resume();
      // node:http now reads the socket itself; what the lane read and did not answer comes first.
      if (rest && rest.length > 0 && !socket.destroyed) socket.emit('data', rest);
    };
    /** Sends a stored file; reads the next request only once it is sent. */
    const sendStored = (file: FileRequest) => {
      socket.pause();
      this.busy.add(socket);
      void this.sendStored(socket, file).then((sent) => {
        this.busy.delete(socket);
        if (sent === 'gone') return;
        if (sent === 'not-sent') return handOver(file.from);
        if (keepAlive > 0) socket.setTimeout(keepAlive);
        if (sent === 'closed') return void socket.end();
        // Shutting down: node:http answers what else came (a 503 that closes), or the lane closes.
        if (this.door.isClosing) return file.rest.length > 0 ? handOver(file.rest) : socket.end();
        socket.resume();
        if (file.rest.length > 0) serve(file.rest);
      });
    };
    /** Answers what `data` holds; stops while the client has too many answers to take. */
    const serve = (data: Buffer) => {
      const outcome = this.answerAll(socket, data);
      if (outcome === 'closed') return;
      if ('answer' in outcome) return sendStored(outcome);
      if (outcome.rest === undefined) return;
      if (outcome.handOver) return handOver(outcome.rest);
      // Enough answers queued for one turn: read nothing more until the client has taken them (or,
      // when the kernel already took them all, until the next turn of the event loop).
      pending = outcome.rest;
      socket.pause();
      const resume = () => {
        const held = pending;
        pending = undefined;
        if (socket.destroyed) return;
        socket.resume();
        if (held) serve(held);
      };
      if (socket.writableNeedDrain) socket.once('drain', resume);
      else setImmediate(resume);
    };
    const onData = (chunk: Buffer) => {
      const data = pending ? Buffer.concat([pending, chunk]) : chunk;
      pending = undefined;
      serve(data);
    };
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onClose);
    if (keepAlive > 0) {
      socket.setTimeout(keepAlive);
      socket.on('timeout', onTimeout);
    }
  }

  /**
   * Answers the complete hot requests at the start of `data`, in order, until the client has more
   * than MAX_QUEUED_BYTES of answers waiting or a request asks for a stored file. Returns 'closed'
   * when a request asked to close the connection; the file request, to be sent next; else the bytes
   * not answered (none: all were), and whether they are to be handed over (they start with a
   * request the lane does not answer) or only held back.
   */
  private answerAll(socket: Socket, data: Buffer): Outcome {
    let offset = 0;
    const answers: Buffer[] = [];
    this.written.length = 0;
    this.writtenUrls.length = 0;
    let queued = socket.writableLength;
    let outcome: Outcome = { rest: undefined, handOver: false };
    while (offset < data.length) {
      if (queued > MAX_QUEUED_BYTES) {
        outcome = { rest: data.subarray(offset), handOver: false };
        break;
      }
      const end = data.indexOf('\r\n\r\n', offset, 'latin1');
      const request =
        end >= 0 && end - offset <= MAX_HEAD_BYTES
          ? parseHead(data.toString('latin1', offset, end))
          : null;
      const answer =
        request &&
        this.door.answerRequest(
          request.method,
          request.url,
          request.authorization,
          request.requestId,
        );
      if (!request || !answer) {
        outcome = { rest: data.subarray(offset), handOver: true };
        break;
      }
      if (answer.file) {
        const { url, close } = request;
        const [from, rest] = [data.subarray(offset), data.subarray(end + 4)];
        outcome = { answer: { ...answer, file: answer.file }, url, close, from, rest };
        break;
      }
      const bytes = this.render(answer.hot, answer, request.close);
      answers.push(bytes);
      queued += bytes.length;
      this.written.push(answer);
      this.writtenUrls.push(request.url);
      offset = end + 4;
      if (request.close) {
        outcome = 'closed';
        break;
      }
    }
    if (answers.length > 0) {
      const bytes = answers.length === 1 ? answers[0] : Buffer.concat(answers);
      if (outcome === 'closed') socket.end(bytes);
      else socket.write(bytes);
      // Logged and counted after the write: a client waiting for its answer (Nix asks one request
      // after another) does not wait for the access line and the metrics too.
      for (let i = 0; i < this.written.length; i++) {
        this.door.answered(this.written[i], this.writtenUrls[i], true);
      }
      this.written.length = 0;
      this.writtenUrls.length = 0;
    }
    return outcome;
  }

  /** The answer's bytes: what node:http writes for the front door's answer, head and body. */
  private render(hot: HotAnswer, answer: LaneAnswer, close: boolean): Buffer {
    const body = answer.method === 'HEAD' ? EMPTY : hot.body;
    const head = this.head(answer.reqId, hot.headers, hot.body.length, close);
    const bytes = Buffer.allocUnsafe(head.length + body.length);
    bytes.write(head, 0, 'latin1');
    body.copy(bytes, head.length);
    return bytes;
  }

  /** A 200's head, as node:http writes it for the front door's answer. */
  private head(reqId: string, headers: readonly string[], length: number, close: boolean): string {
    let head = `HTTP/1.1 200 OK\r\nx-request-id: ${reqId}\r\n`;
    for (let i = 0; i < headers.length; i += 2) {
      head += `${headers[i]}: ${headers[i + 1]}\r\n`;
    }
    head += `content-length: ${length}\r\nDate: ${this.now()}\r\n`;
    head += close
      ? 'Connection: close\r\n\r\n'
      : `Connection: keep-alive\r\nKeep-Alive: timeout=${Math.floor(this.server.keepAliveTimeout / 1000)}\r\n\r\n`;
    return head;
  }

  /**
   * Sends a stored file (HotRoute.file) after the answers queued before it: the head through the
   * socket, then, once the socket has taken everything, the file by sendfile(2) straight from the
   * kernel. 'not-sent' when nothing of it was written (no free sendfile slot, no descriptor, the
   * file gone): the caller hands the request to node:http. A transfer that fails or stalls destroys
   * the connection ('gone'): the client never sees a clean end of a short body.
   */
  private async sendStored(socket: Socket, request: FileRequest): Promise<FileOutcome> {
    const { answer, url, close } = request;
    const file = answer.file;
    const fd = (socket as InternalSocket)._handle?.fd;
    if (typeof fd !== 'number' || fd < 0) return 'not-sent';
    let opened: OpenHotFile | undefined;
    try {
      opened = await file.open();
      if (!opened) return 'not-sent';
      const head = Buffer.from(this.head(answer.reqId, file.headers, file.size, close), 'latin1');
      if (!(await writeSettled(socket, head))) {
        this.door.answered(answer, url, false);
        return 'gone';
      }
      // The keep-alive timeout must not cut a long transfer: sendfile watches for stalls itself.
      socket.setTimeout(0);
      const stop = new AbortController();
      const onClose = () => stop.abort();
      socket.once('close', onClose);
      const { failed } = await opened
        .send(fd, stop.signal)
        .finally(() => socket.removeListener('close', onClose));
      this.door.answered(answer, url, !failed);
      if (!failed) return close ? 'closed' : 'sent';
      socket.destroy();
      return 'gone';
    } catch {
      socket.destroy();
      return 'gone';
    } finally {
      await opened?.close().catch(() => undefined);
    }
  }

  /** The Date header's value, made once a second. */
  private now(): string {
    const ms = Date.now();
    const second = Math.floor(ms / 1000);
    if (second !== this.dateSecond) {
      this.dateSecond = second;
      this.date = new Date(ms).toUTCString();
    }
    return this.date;
  }
}

/** The head of a hot GET the lane may answer, or null for anything else (node:http's then). */
export function parseHead(head: string): HotRequest | null {
  const lines = head.split('\r\n');
  const line = REQUEST_LINE.exec(lines[0]);
  if (!line) return null;
  const request: HotRequest = { method: line[1] as 'GET' | 'HEAD', url: line[2], close: false };
  let hosts = 0;
  let authorizations = 0;
  for (let i = 1; i < lines.length; i++) {
    const header = HEADER_LINE.exec(lines[i]);
    if (!header) return null;
    const name = header[1].toLowerCase();
    const value = header[2] ?? '';
    switch (name) {
      case 'host':
        hosts++;
        break;
      case 'authorization':
        authorizations++;
        request.authorization = value;
        break;
      case 'x-request-id':
        request.requestId ??= value;
        break;
      case 'connection': {
        const tokens = value
          .toLowerCase()
          .split(',')
          .map((t) => t.trim());
        if (tokens.includes('upgrade')) return null;
        if (tokens.includes('close')) request.close = true;
        break;
      }
      case 'content-length':
      case 'transfer-encoding':
      case 'range':
      case 'if-range':
      case 'expect':
      case 'upgrade':
        return null;
    }
  }
  if (hosts !== 1 || authorizations > 1) return null;
  return request;
}
