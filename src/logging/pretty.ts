import type { DestinationStream } from 'pino';

const COLORS: Record<string, string> = {
  trace: '\x1b[90m',
  debug: '\x1b[36m',
  info: '\x1b[32m',
  warn: '\x1b[33m',
  error: '\x1b[31m',
  fatal: '\x1b[41m\x1b[97m',
};
const RESET = '\x1b[0m';
const DIM = '\x1b[2m';

/** Fields every line has or that are shown in the line's head rather than as `key=value`. */
const SHOWN = new Set(['time', 'level', 'msg', 'context', 'reqId', 'pid', 'hostname', 'err']);

/**
 * One pino JSON line as a line for people: `12:34:56.789 INFO  [narinfo] cached … reqId=…`, extra
 * fields as `key=value`, an error's stack below. A line that is not JSON is passed through.
 */
export function formatPretty(line: string, color = false): string {
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line.endsWith('\n') ? line : `${line}\n`;
  }
  const level = typeof entry.level === 'string' ? entry.level : 'info';
  const time = typeof entry.time === 'string' ? entry.time.slice(11, 23) : '';
  const paint = (code: string | undefined, text: string) =>
    color && code ? `${code}${text}${RESET}` : text;
  const parts = [paint(DIM, time), paint(COLORS[level], level.toUpperCase().padEnd(5))];
  if (typeof entry.context === 'string') parts.push(`[${entry.context}]`);
  if (entry.msg !== undefined)
    parts.push(typeof entry.msg === 'string' ? entry.msg : JSON.stringify(entry.msg));
  for (const [k, v] of Object.entries(entry)) {
    if (!SHOWN.has(k))
      parts.push(paint(DIM, `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`));
  }
  if (typeof entry.reqId === 'string') parts.push(paint(DIM, `reqId=${entry.reqId}`));
  let out = parts.join(' ');
  const err = entry.err as { stack?: unknown; message?: unknown } | undefined;
  if (err && typeof err === 'object') {
    const detail = typeof err.stack === 'string' ? err.stack : String(err.message);
    out += `\n  ${detail.replace(/\n/g, '\n  ')}`;
  }
  return `${out}\n`;
}

/** A pino destination writing human-readable lines to `out` (coloured when it is a terminal). */
export function prettyStream(out: NodeJS.WritableStream & { isTTY?: boolean }): DestinationStream {
  const color = out.isTTY === true;
  return { write: (line: string) => void out.write(formatPretty(line, color)) };
}
