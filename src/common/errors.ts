/**
 * Domain errors thrown by services; `HttpErrorFilter` maps them to HTTP in one place. Errors of the
 * Nix wire format (a 400) live in `nix/errors.ts`.
 */

export class NotFoundError extends Error {
  override name = 'NotFoundError';
}

/** Every upstream failed or missed. For lookups this is a 404 so that Nix falls back. */
export class UpstreamUnavailableError extends Error {
  override name = 'UpstreamUnavailableError';
}

/** A download broke, was truncated or did not match its hash. Never stored, never served cleanly. */
export class DownloadFailedError extends Error {
  override name = 'DownloadFailedError';
}

/**
 * A download whose bytes arrived but do not match what its narinfo promises (size, FileHash,
 * NarSize, NarHash, or not decompressible): a failed download like any other, told apart for the
 * status page's recent failures.
 */
export class NarMismatchError extends DownloadFailedError {
  override name = 'NarMismatchError';
}

/** The NAR decompresses to more than its NarSize (a decompression bomb); decoding stopped there. */
export class NarTooLargeError extends NarMismatchError {
  override name = 'NarTooLargeError';
}

/** No valid token where one is needed (none, unknown, expired, revoked): 401 with a Basic challenge. */
export class UnauthorizedError extends Error {
  override name = 'UnauthorizedError';
}

/** A valid token without the permission the request needs: 403. */
export class ForbiddenError extends Error {
  override name = 'ForbiddenError';
}

/**
 * An upload refused for what it carries (bytes that do not match their name, a narinfo that does not
 * match its NAR, a document that is not one): 400, and nothing is kept.
 */
export class UploadRejectedError extends Error {
  override name = 'UploadRejectedError';
}

/** An upload larger than narwhal accepts for its kind: 413. */
export class UploadTooLargeError extends UploadRejectedError {
  override name = 'UploadTooLargeError';
}

/** An upload in a Content-Encoding narwhal cannot decode: 415. */
export class UnsupportedEncodingError extends UploadRejectedError {
  override name = 'UnsupportedEncodingError';
}

/** An upload that would replace something else already here (e.g. a different narinfo): 409. */
export class ConflictError extends Error {
  override name = 'ConflictError';
}

export class MethodNotAllowedError extends Error {
  override name = 'MethodNotAllowedError';
}

/** A Range that lies wholly past the end of the file: 416 with `Content-Range: bytes *\/length`. */
export class RangeNotSatisfiableError extends Error {
  override name = 'RangeNotSatisfiableError';
  constructor(readonly length: number) {
    super(`range not satisfiable (the file has ${length} bytes)`);
  }
}

/** narwhal's own disk is full (ENOSPC): a local fault, not the upstream's. 507 to the client. */
export class InsufficientStorageError extends Error {
  override name = 'InsufficientStorageError';
}

/**
 * narwhal cannot answer right now but will soon: 503 with `Retry-After`, which makes Nix back off and
 * retry instead of giving up on the cache.
 */
export class ServiceUnavailableError extends Error {
  override name = 'ServiceUnavailableError';
  constructor(
    message: string,
    readonly retryAfterSeconds = 5,
  ) {
    super(message);
  }
}

/**
 * A lock waiter gave up: the lock stayed held (by a live instance) for all its retries. The client
 * is told to come back (503 with Retry-After) rather than kept waiting.
 */
export class LockTimeoutError extends ServiceUnavailableError {
  override name = 'LockTimeoutError';
}

/** The database cannot be reached. */
export class DatabaseUnavailableError extends ServiceUnavailableError {
  override name = 'DatabaseUnavailableError';
}
