import type { Socket } from 'node:net';

type Listener = (...args: unknown[]) => void;

/** undici's HTTP/1 response parser, as far as the guard looks at it. */
interface PausableParser {
  paused: boolean;
}

/**
 * Guards a socket of undici's HTTP/1 client against nodejs/undici#5360: when a server closes the
 * connection (FIN) while the response parser is paused — the body's reader is behind, and the rest
 * of the response already sits in the socket's buffer — undici's 'end' listener throws an
 * AssertionError (`assert(!this.paused)`) that nothing can catch, and the process dies. Any upstream
 * that closes after a response can cause it: an HTTP/1.0 server, `Connection: close`, nginx's
 * last request of a keep-alive connection. The fix is in undici 8 only, which needs Node 22.
 *
 * What the guard does instead: the socket stays open when the server's FIN arrives (allowHalfOpen,
 * else Node closes it at once, and the 'close' listener asserts the same); an 'end' that arrives
 * while the parser is paused is handled once the reader resumes the parser (which then parses what
 * was buffered, so a complete response completes and a short one fails as short), and then the
 * socket is ended as Node would have; should undici's 'end' listener throw anyway, the socket is
 * destroyed with that error, which fails the request instead of the process.
 */
export function guardSocketEnd(socket: Socket): void {
  // Node would end and close the socket right after 'end', and what the paused parser has not read
  // yet would be lost: the socket is closed by the guarded 'end' listener below instead.
  socket.allowHalfOpen = true;
  // eslint-disable-next-line @typescript-eslint/unbound-method -- called with the socket as this
  const on = socket.on as (this: Socket, event: string | symbol, listener: Listener) => Socket;
  const add = function (this: Socket, event: string | symbol, listener: Listener): Socket {
    if (event !== 'end') return on.call(this, event, listener);
    const guarded = endHandler(socket, listener);
    // So that removeListener('end', listener) (undici's cleanup) removes the wrapper too.
    (guarded as Listener & { listener: Listener }).listener = listener;
    return on.call(this, 'end', guarded);
  };
  socket.on = add as Socket['on'];
  socket.addListener = add as Socket['addListener'];
}

function endHandler(socket: Socket, listener: Listener): Listener {
  const handle = (...args: unknown[]): void => {
    if (socket.destroyed) return; // the close handler cleans up
    const parser = parserOf(socket);
    if (parser?.paused) {
      whenResumed(socket, parser, () => handle(...args));
      return;
    }
    try {
      listener.apply(socket, args);
    } catch (e) {
      socket.destroy(e instanceof Error ? e : new Error(String(e)));
      return;
    }
    // What Node does after 'end' without allowHalfOpen: end this side too, and the socket closes.
    if (!socket.destroyed) socket.end();
  };
  return handle;
}

/** How often a paused parser is looked at after the server's FIN (a rare case). */
const POLL_MS = 2;

/**
 * Runs `then` once the parser is no longer paused (its reader resumed it, and it parsed what the
 * socket buffered), unless the socket is destroyed first (an error, the body timeout, a reader
 * that gave up). undici hands the reader a bound `resume` when the headers arrive, so there is no
 * call to hook: the parser's flag is looked at instead.
 */
function whenResumed(socket: Socket, parser: PausableParser, then: () => void): void {
  const timer = setInterval(() => {
    if (socket.destroyed) clearInterval(timer);
    else if (!parser.paused) {
      clearInterval(timer);
      then();
    }
  }, POLL_MS);
}

function parserOf(socket: Socket): PausableParser | undefined {
  const key = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'parser');
  const parser =
    key === undefined ? undefined : (socket as unknown as Record<symbol, unknown>)[key];
  return parser && typeof parser === 'object' ? (parser as PausableParser) : undefined;
}
