/** Domain errors thrown by services; `HttpErrorFilter` maps them to HTTP in one place. */

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

export class MethodNotAllowedError extends Error {
  override name = 'MethodNotAllowedError';
}
