import {
  createServer,
  request,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo } from 'node:net';

/** One request the proxy passed on, with what came back. */
export interface ProxiedRequest {
  method: string;
  path: string;
  range?: string;
  status: number;
  contentRange?: string;
  /** Body bytes the client got before the proxy cut the connection, when it did. */
  cutAfter?: number;
}

/**
 * An HTTP proxy in front of narwhal that breaks the first response to a path matching `victim`
 * after `cutAfterBytes` body bytes (a dropped connection, a load balancer restarting), and passes
 * everything else through untouched, remembering each request.
 */
export class CuttingProxy {
  readonly requests: ProxiedRequest[] = [];
  private cut = false;
  private readonly server: Server;
  private target = { hostname: '', port: '' };
  url = '';

  private constructor(
    private readonly victim: RegExp,
    private readonly cutAfterBytes: number,
  ) {
    this.server = createServer((req, res) => this.forward(req, res));
  }

  static async start(target: string, victim: RegExp, cutAfterBytes: number): Promise<CuttingProxy> {
    const proxy = new CuttingProxy(victim, cutAfterBytes);
    const { hostname, port } = new URL(target);
    proxy.target = { hostname, port };
    await new Promise<void>((resolve) => proxy.server.listen(0, '127.0.0.1', resolve));
    proxy.url = `http://127.0.0.1:${(proxy.server.address() as AddressInfo).port}`;
    return proxy;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private forward(req: IncomingMessage, res: ServerResponse): void {
    const entry: ProxiedRequest = {
      method: req.method ?? '',
      path: req.url ?? '',
      range: req.headers.range,
      status: 0,
    };
    this.requests.push(entry);
    const breakThis = !this.cut && this.victim.test(entry.path);
    if (breakThis) this.cut = true;
    const limit = this.cutAfterBytes;
    const upstream = request(
      { ...this.target, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        entry.status = answer.statusCode ?? 0;
        entry.contentRange = answer.headers['content-range'];
        res.writeHead(entry.status, answer.headers);
        if (!breakThis) {
          answer.pipe(res);
          return;
        }
        let sent = 0;
        answer.on('data', (chunk: Buffer) => {
          if (sent >= limit) return;
          const part = chunk.subarray(0, limit - sent);
          sent += part.length;
          res.write(part);
          if (sent >= limit) {
            entry.cutAfter = sent;
            answer.destroy();
            // Let the bytes reach the client, then drop the connection mid-body.
            res.once('drain', () => res.socket?.destroy());
            setTimeout(() => res.socket?.destroy(), 100);
          }
        });
      },
    );
    upstream.on('error', () => res.socket?.destroy());
    req.pipe(upstream);
  }
}
