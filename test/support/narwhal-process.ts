import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { NODE_FLAGS } from '../../src/runtime-flags';
import { httpGet } from './http-client';
import { freePort } from './ports';

/** Runs the built server (`node <NODE_FLAGS> dist/main.js serve`) as a child process, like `npm start`. */

const REPO_ROOT = resolve(__dirname, '..', '..');
const READY_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;

export interface NarwhalOptions {
  dataPath: string;
  /** Upstream cache URLs, in order; each may carry `?priority=N`. */
  upstreamUrls: string[];
  upstreamPublicKeys: string[];
  hostname?: string;
  /** Extra environment variables, applied last. */
  env?: NodeJS.ProcessEnv;
  /** Script to run with `serve`, relative to the repository; default `dist/main.js`. */
  entry?: string;
}

export class NarwhalProcess {
  private output = '';
  private exited: Promise<void>;
  private exitInfo: { code: number | null; signal: NodeJS.Signals | null } | null = null;

  private constructor(
    private readonly child: ChildProcess,
    readonly port: number,
  ) {
    this.child.stdout?.on('data', (chunk: Buffer) => (this.output += chunk.toString('utf8')));
    this.child.stderr?.on('data', (chunk: Buffer) => (this.output += chunk.toString('utf8')));
    this.exited = new Promise((done) => {
      this.child.once('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        done();
      });
    });
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Everything the process wrote to stdout and stderr so far, for failure messages. */
  logs(): string {
    return this.output;
  }

  static async start(options: NarwhalOptions): Promise<NarwhalProcess> {
    const port = await freePort();
    const args = [...NODE_FLAGS, options.entry ?? 'dist/main.js', 'serve'];
    const child = spawn(process.execPath, args, {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env,
        SERVER_ADDR: `127.0.0.1:${port}`,
        CACHE_HOSTNAME: options.hostname ?? 'narwhal-e2e',
        CACHE_DATA_PATH: options.dataPath,
        CACHE_UPSTREAM_URL: options.upstreamUrls.join(','),
        CACHE_UPSTREAM_PUBLIC_KEY: options.upstreamPublicKeys.join(','),
        LOG_LEVEL: 'warn',
        ...options.env,
      },
    });
    const narwhal = new NarwhalProcess(child, port);
    try {
      await narwhal.waitUntilHealthy();
    } catch (err) {
      await narwhal.kill();
      throw err;
    }
    return narwhal;
  }

  private async waitUntilHealthy(): Promise<void> {
    const deadline = Date.now() + READY_TIMEOUT_MS;
    let lastError = 'no attempt yet';
    while (Date.now() < deadline) {
      if (this.exitInfo) {
        throw new Error(
          `narwhal exited before it was healthy (code ${this.exitInfo.code}, signal ` +
            `${this.exitInfo.signal})\n--- narwhal output ---\n${this.output}`,
        );
      }
      const res = await httpGet(`${this.url}/healthz`, { timeoutMs: 2_000 });
      if (res.status === 200) return;
      lastError = res.error ?? `GET /healthz answered ${res.status}`;
      await sleep(200);
    }
    throw new Error(
      `narwhal was not healthy within ${READY_TIMEOUT_MS} ms (${lastError})\n` +
        `--- narwhal output ---\n${this.output}`,
    );
  }

  /** GET /pubkey: `name:base64`. */
  async publicKey(): Promise<string> {
    const res = await fetch(`${this.url}/pubkey`);
    if (res.status !== 200) throw new Error(`GET /pubkey answered ${res.status}`);
    return (await res.text()).trim();
  }

  /** SIGTERM and wait for the exit (SIGKILL after 10 s). */
  async stop(): Promise<void> {
    if (this.exitInfo) return;
    this.child.kill('SIGTERM');
    const stopped = await Promise.race([
      this.exited.then(() => true),
      sleep(STOP_TIMEOUT_MS).then(() => false),
    ]);
    if (!stopped) {
      await this.kill();
      throw new Error(
        `narwhal did not stop within ${STOP_TIMEOUT_MS} ms of SIGTERM\n` +
          `--- narwhal output ---\n${this.output}`,
      );
    }
  }

  /** Sends `signal` and returns at once (see waitForExit). */
  signal(signal: NodeJS.Signals): void {
    this.child.kill(signal);
  }

  /** Waits for the process to end; rejects if it still runs after `timeoutMs`. */
  async waitForExit(
    timeoutMs = STOP_TIMEOUT_MS,
  ): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const exited = await Promise.race([
      this.exited.then(() => true),
      sleep(timeoutMs).then(() => false),
    ]);
    if (!exited || !this.exitInfo) {
      throw new Error(
        `narwhal still runs after ${timeoutMs} ms\n--- narwhal output ---\n${this.output}`,
      );
    }
    return this.exitInfo;
  }

  /** SIGKILL and wait for the exit. */
  async kill(): Promise<void> {
    if (this.exitInfo) return;
    this.child.kill('SIGKILL');
    await this.exited;
  }

  /** How the process ended, or null while it runs. */
  exitStatus(): { code: number | null; signal: NodeJS.Signals | null } | null {
    return this.exitInfo;
  }
}
