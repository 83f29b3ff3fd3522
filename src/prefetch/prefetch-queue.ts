export type PrefetchKind = 'narinfo' | 'nar';

/** One piece of background work: a narinfo lookup or a NAR download. */
export interface PrefetchJob {
  kind: PrefetchKind;
  /** Unique per thing fetched: the same key is not queued twice, nor while it runs. */
  key: string;
  /** False while the job must not start yet (its upstream is busy with clients); asked again later. */
  canStart(): boolean;
  /**
   * The work; `signal` (the job's own) aborts at shutdown. Errors are the job's own business (caught
   * here too).
   */
  run(signal: AbortSignal): Promise<void>;
}

export interface PrefetchQueueOptions {
  /** Most jobs running at once. */
  concurrency: number;
  /** Most jobs waiting; more are refused. */
  maxQueued: number;
  /** How soon a queue held back by `canStart` looks again. */
  retryMs: number;
}

/**
 * Background work in two lanes, first in first out, run at most `concurrency` at a time: narinfo
 * lookups before NAR downloads (a client's walk of a closure waits for narinfos, one level after the
 * other) but in no more than half of the slots while NAR downloads wait (a client downloads NARs
 * while the walk of a big closure may still be running), and NAR downloads never in every slot, so
 * that a few big downloads do not stall the walk.
 * A job whose `canStart` says no holds its lane back until a job ends or `retryMs` has passed.
 */
export class PrefetchQueue {
  private readonly lanes: Record<PrefetchKind, PrefetchJob[]> = { narinfo: [], nar: [] };
  private readonly runningByKind: Record<PrefetchKind, number> = { narinfo: 0, nar: 0 };
  private readonly keys = new Set<string>();
  /** Running jobs: what they settle as, and what aborts them. */
  private readonly inFlight = new Map<Promise<void>, AbortController>();
  private retry: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(private readonly options: PrefetchQueueOptions) {}

  /** Jobs waiting to start. */
  get queued(): number {
    return this.lanes.narinfo.length + this.lanes.nar.length;
  }

  /** Jobs running now. */
  get running(): number {
    return this.inFlight.size;
  }

  /** True while a job with this key waits or runs. */
  has(key: string): boolean {
    return this.keys.has(key);
  }

  /**
   * Queues `job` and starts what may start. `queued` when accepted; `duplicate` when its key
   * waits or runs already; `full` when the queue is full; `stopped` after stop().
   */
  add(job: PrefetchJob): 'queued' | 'duplicate' | 'full' | 'stopped' {
    if (this.stopped) return 'stopped';
    if (this.keys.has(job.key)) return 'duplicate';
    if (this.queued >= this.options.maxQueued) return 'full';
    this.keys.add(job.key);
    this.lanes[job.kind].push(job);
    this.pump();
    return 'queued';
  }

  /**
   * Drops every waiting job, aborts the running ones through their signal and waits for them to end,
   * for at most `waitMs`. Resolves the number still running then.
   */
  async stop(waitMs: number): Promise<number> {
    this.stopped = true;
    clearTimeout(this.retry);
    for (const lane of Object.values(this.lanes)) {
      for (const job of lane) this.keys.delete(job.key);
      lane.length = 0;
    }
    for (const controller of this.inFlight.values()) controller.abort();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((done) => {
      timer = setTimeout(done, waitMs);
    });
    await Promise.race([Promise.allSettled([...this.inFlight.keys()]), timeout]);
    clearTimeout(timer);
    return this.inFlight.size;
  }

  private pump(): void {
    if (this.stopped) return;
    let heldBack = false;
    while (this.inFlight.size < this.options.concurrency) {
      const job = this.next();
      if (job === 'held') heldBack = true;
      if (job === 'held' || job === undefined) break;
      this.start(job);
    }
    if (heldBack && this.retry === undefined) {
      this.retry = setTimeout(() => {
        this.retry = undefined;
        this.pump();
      }, this.options.retryMs);
      this.retry.unref();
    }
  }

  /** The next job that may start (taken off its lane), `held` if one must wait, or none. */
  private next(): PrefetchJob | 'held' | undefined {
    let held = false;
    // Lookups first, but while NAR downloads wait, lookups take at most half of the slots.
    const lookupsHaveHalf =
      this.runningByKind.narinfo >= Math.ceil(this.options.concurrency / 2) &&
      this.lanes.nar.length > 0;
    const order = lookupsHaveHalf ? (['nar', 'narinfo'] as const) : (['narinfo', 'nar'] as const);
    for (const kind of order) {
      const lane = this.lanes[kind];
      if (lane.length === 0) continue;
      // NAR downloads leave one slot to narinfo lookups.
      const limit = kind === 'nar' ? Math.max(1, this.options.concurrency - 1) : Infinity;
      if (this.runningByKind[kind] >= limit) continue;
      if (!lane[0].canStart()) {
        held = true;
        continue;
      }
      return lane.shift();
    }
    return held ? 'held' : undefined;
  }

  /**
   * Runs `job` with a signal of its own. One signal shared by every job of the process's life would
   * gather what each job (and the fetches it makes) leaves listening on it: a leak, and Node's
   * MaxListenersExceededWarning once eleven jobs had run.
   */
  private start(job: PrefetchJob): void {
    this.runningByKind[job.kind]++;
    const controller = new AbortController();
    const done: Promise<void> = Promise.resolve()
      .then(() => job.run(controller.signal))
      .catch(() => undefined)
      .finally(() => {
        this.runningByKind[job.kind]--;
        this.inFlight.delete(done);
        this.keys.delete(job.key);
        this.pump();
      });
    this.inFlight.set(done, controller);
  }
}
