/**
 * Whether an error from a query means "the database cannot be reached right now" (a stopped or
 * restarting server, a dropped connection, a full disk under SQLite) rather than a bad query.
 * TypeORM wraps driver errors in QueryFailedError with the original as `driverError`.
 */
export function isDatabaseOutage(e: unknown): boolean {
  for (const err of [e, (e as { driverError?: unknown } | null)?.driverError]) {
    if (!err || typeof err !== 'object') continue;
    const { code, message } = err as { code?: unknown; message?: unknown };
    if (typeof code === 'string' && OUTAGE_CODES.has(code)) return true;
    // PostgreSQL SQLSTATE class 08: connection exception.
    if (typeof code === 'string' && /^08[0-9A-Z]{3}$/.test(code)) return true;
    if (typeof message === 'string' && OUTAGE_MESSAGES.some((m) => message.includes(m)))
      return true;
  }
  return false;
}

const OUTAGE_CODES = new Set([
  // sockets
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  // PostgreSQL: admin_shutdown, crash_shutdown, cannot_connect_now
  '57P01',
  '57P02',
  '57P03',
  // MySQL / MariaDB (mysql2)
  'PROTOCOL_CONNECTION_LOST',
  'PROTOCOL_SEQUENCE_TIMEOUT',
  'ER_SERVER_SHUTDOWN',
  'ER_CON_COUNT_ERROR',
  // SQLite (better-sqlite3)
  'SQLITE_BUSY',
  'SQLITE_FULL',
  'SQLITE_IOERR',
  'SQLITE_CANTOPEN',
]);

const OUTAGE_MESSAGES = [
  'Connection terminated',
  'timeout exceeded when trying to connect',
  'Client has encountered a connection error',
  "Can't add new command when connection is in closed state",
  'Pool is closed',
];
