import { setTimeout as sleep } from 'node:timers/promises';

/** Waiting, by wall-clock time, for something the server finishes on its own schedule. */

/**
 * Polls `probe` until `done` holds for its value or `timeoutMs` has passed, and returns the last
 * value either way: the caller asserts on it, with its own message.
 */
export async function pollUntil<T>(
  probe: () => T | Promise<T>,
  done: (value: T) => boolean,
  { timeoutMs = 5000, intervalMs = 20 }: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let value = await probe();
  while (!done(value) && Date.now() < deadline) {
    await sleep(intervalMs);
    value = await probe();
  }
  return value;
}

/** Polls `check` until it returns true (or throws after `timeoutMs`). */
export async function eventually(
  check: () => boolean | Promise<boolean>,
  timeoutMs = 5000,
  what = 'condition',
): Promise<void> {
  if (!(await pollUntil(check, (ok) => ok, { timeoutMs }))) {
    throw new Error(`${what} not reached within ${timeoutMs} ms`);
  }
}
