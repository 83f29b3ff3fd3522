import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, beforeEach } from 'vitest';
import { NODE_FLAGS, RUNTIME_ENV } from '../../src/runtime-flags';
import { FakeUpstream } from './fake-upstream';
import { httpGet } from './http-client';
import { run, type RunResult } from './nix';
import { freePort } from './ports';
import { procMemory, type ProcMemory } from './proc-memory';
import type { TestKey } from './signing-keys';

/**
 * Runs the built server (`node <NODE_FLAGS> dist/main.js serve` with RUNTIME_ENV) as a child
 * process, like `npm start`.
 */

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

/** The environment `narwhal <command>` runs with for these options. */
function narwhalEnv(options: NarwhalOptions): NodeJS.ProcessEnv {
  return {
    ...process.env,
    ...RUNTIME_ENV,
    CACHE_HOSTNAME: options.hostname ?? 'narwhal-e2e',
    CACHE_DATA_PATH: options.dataPath,
    CACHE_UPSTREAM_URL: options.upstreamUrls.join(','),
    CACHE_UPSTREAM_PUBLIC_KEY: options.upstreamPublicKeys.join(','),
    LOG_LEVEL: 'warn',
    ...options.env,
  };
}

/** Runs `narwhal <args>` from dist/ to completion (as an operator would), with `env` as settings. */
export function runNarwhalCommand(args: string[], env: NodeJS.ProcessEnv): Promise<RunResult> {
  return run(process.execPath, [...NODE_FLAGS, 'dist/main.js', ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, ...RUNTIME_ENV, LOG_LEVEL: 'warn', ...env },
  });
}

/**
 * Runs another command of the built CLI (`fsck`, `migrate`…) with the settings a `serve` of these
 * options has, plus `args`; resolves its exit code and output.
 */
export async function runNarwhalWith(
  options: NarwhalOptions,
  command: string,
  args: string[] = [],
): Promise<{ code: number | null; output: string }> {
  const { code, stdout, stderr } = await runNarwhalCommand([command, ...args], narwhalEnv(options));
  return { code, output: stdout + stderr };
}

export class NarwhalProcess {
  private output = '';
  private exited: Promise<void>;
  private exitInfo: { code: number | null; signal: NodeJS.Signals | null } | null = null;

  private constructor(
    private readonly child: ChildProcess,
    readonly port: number,
    /** `--cache-data-path`. */
    readonly dataPath: string,
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

  /** Storage root: `<dataPath>/store` (objects in nar/, spools in tmp/). */
  get storeRoot(): string {
    return join(this.dataPath, 'store');
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error('narwhal has no pid');
    return this.child.pid;
  }

  /** RSS now and at its peak (/proc/<pid>/status). */
  memory(): Promise<ProcMemory> {
    return procMemory(this.pid);
  }

  /** Everything the process wrote to stdout and stderr so far, for failure messages. */
  logs(): string {
    return this.output;
  }

  /**
   * The output once it matches `pattern` (or as it is after `timeoutMs`): lines reach this process
   * through a pipe, a moment after whatever the line is about.
   */
  async logsMatching(pattern: RegExp, timeoutMs = 10_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (!pattern.test(this.output) && Date.now() < deadline) await sleep(20);
    return this.output;
  }

  static async start(options: NarwhalOptions): Promise<NarwhalProcess> {
    const port = await freePort();
    const args = [...NODE_FLAGS, options.entry ?? 'dist/main.js', 'serve'];
    const child = spawn(process.execPath, args, {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...narwhalEnv(options), SERVER_ADDR: `127.0.0.1:${port}` },
    });
    const narwhal = new NarwhalProcess(child, port, options.dataPath);
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

/** What useNarwhalProcess gives the tests of a file, once its beforeAll has run. */
export interface ProcessTestbed {
  readonly upstream: FakeUpstream;
  readonly narwhal: NarwhalProcess;
}

/**
 * For the tests of the calling file: a FakeUpstream and a narwhal process in front of it (a fresh
 * data path; upstream key `key`; more settings in `env`), started in beforeAll and stopped and
 * removed in afterAll. A failing test prints the end of the process's output.
 */
export function useNarwhalProcess(key: TestKey, env: NodeJS.ProcessEnv = {}): ProcessTestbed {
  let upstream: FakeUpstream | undefined;
  let narwhal: NarwhalProcess | undefined;
  let dataPath: string | undefined;
  beforeAll(async () => {
    dataPath = await mkdtemp(join(tmpdir(), 'narwhal-process-'));
    upstream = await FakeUpstream.start();
    narwhal = await NarwhalProcess.start({
      dataPath,
      upstreamUrls: [upstream.url],
      upstreamPublicKeys: [key.publicText],
      env,
    });
  });
  afterAll(async () => {
    await narwhal?.kill();
    await upstream?.close();
    if (dataPath) await rm(dataPath, { recursive: true, force: true });
  });
  beforeEach(({ onTestFailed }) => {
    onTestFailed(() => {
      console.error(`narwhal exit status: ${JSON.stringify(narwhal?.exitStatus())}`);
      console.error(`--- narwhal output (last 6000 chars) ---\n${narwhal?.logs().slice(-6000)}`);
    });
  });
  const started = <T>(value: T | undefined): T => {
    if (value === undefined) throw new Error('useNarwhalProcess: used before its beforeAll ran');
    return value;
  };
  return {
    get upstream() {
      return started(upstream);
    },
    get narwhal() {
      return started(narwhal);
    },
  };
}
