/**
 * The names of objects in a NarStore. NARs: narwhal's own NAR file names (`<nix32>.nar.xz`), kept
 * under `nar/`. Side documents — listings, build logs, realisations — are `<dir>/<name>` (one or
 * two name segments) under their own directories next to `nar/`, so that NAR listings, fsck and
 * accounting never see them.
 */

export const NAR_KEY = /^[0-9a-z]{8,}\.nar(\.[a-z0-9]+)?$/;

/** Top-level directories of side documents, as in a Nix binary cache. */
export const DOCUMENT_DIRS = ['ls', 'log', 'realisations', 'build-trace-v2'] as const;

/** A name segment: store path name characters plus `:` and `!` (realisation ids); no `.`/`..`. */
const SEGMENT = /^[A-Za-z0-9+\-._?=:!]{1,255}$/;

export function isNarKey(key: string): boolean {
  return NAR_KEY.test(key);
}

/** True for `<dir>/<segment>` or `<dir>/<segment>/<segment>` with a known dir and safe segments. */
export function isDocumentKey(key: string): boolean {
  const [dir, ...rest] = key.split('/');
  return (
    (DOCUMENT_DIRS as readonly string[]).includes(dir) &&
    rest.length >= 1 &&
    rest.length <= 2 &&
    rest.every((s) => SEGMENT.test(s) && s !== '.' && s !== '..')
  );
}
