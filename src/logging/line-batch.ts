import type { DestinationStream } from 'pino';

/** Every batch made in this process, flushed when it exits. */
const open = new Set<WeakRef<LineBatch>>();

function flushAll(): void {
  for (const ref of open) ref.deref()?.flush();
}

/** Lines held before they are written at once, however soon after the first. */
const MAX_BATCH_BYTES = 64 * 1024;

/** Longest a line waits for the lines that follow it. */
export const FLUSH_MS = 10;

/**
 * A log destination that writes the lines of up to 10 ms together, with one synchronous write, or
 * as soon as 64 KiB are waiting; at exit (a crash too) what is left is written.
 *
 * One access line per request, written with a write(2) of its own, cost a tenth of a hot hit's
 * time at 25,000 requests a second; handing the lines to an asynchronous writer instead let them
 * pile up in memory under load (+15–20 MB of peak RSS). Batched per turn of the event loop, a busy
 * process made a write every few dozen lines; but a client making one request after another (a
 * `nix copy`) still cost a write and a wake-up of the loop per request, ~30 µs of CPU each on the
 * development machine. Batched over 10 ms, either makes a write per dozens of lines and holds at
 * most 64 KiB. What a `kill -9` can lose is the last 10 ms of lines.
 */
export class LineBatch implements DestinationStream {
  private lines: string[] = [];
  private bytes = 0;
  private scheduled = false;
  private readonly flushNow = () => this.flush();

  constructor(private readonly target: DestinationStream) {
    if (open.size === 0) process.once('exit', flushAll);
    open.add(new WeakRef(this));
  }

  write(line: string): void {
    this.lines.push(line);
    this.bytes += line.length;
    if (this.bytes >= MAX_BATCH_BYTES) {
      this.flush();
    } else if (!this.scheduled) {
      this.scheduled = true;
      setTimeout(this.flushNow, FLUSH_MS).unref();
    }
  }

  /** Writes every waiting line now. */
  flush(): void {
    this.scheduled = false;
    if (this.lines.length === 0) return;
    const text = this.lines.length === 1 ? this.lines[0] : this.lines.join('');
    this.lines = [];
    this.bytes = 0;
    this.target.write(text);
  }
}
