/**
 * Errors raised by the pure Nix protocol layer.
 *
 * Every error here means "the input does not follow the Nix wire format"; callers map the whole
 * family (`instanceof NixFormatError`) to a 4xx or to "treat the upstream answer as absent".
 * Messages may quote offending public values (hashes, paths, file names), shortened, but never key
 * material.
 */

export class NixFormatError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A hash (nix-base32, hex, base64 or SRI) that cannot be decoded or has the wrong size. */
export class InvalidHashError extends NixFormatError {}

/** A store path or store path base name that Nix would reject. */
export class InvalidStorePathError extends NixFormatError {}

/** A request for `nar/<name>` whose name is not `<52 nix32 chars>.nar[.<ext>]`. */
export class InvalidNarNameError extends NixFormatError {}

/** A malformed narinfo; `field` names the offending key when there is one. */
export class NarInfoParseError extends NixFormatError {
  readonly field: string | undefined;

  constructor(message: string, field?: string, options?: ErrorOptions) {
    super(field === undefined ? message : `${field}: ${message}`, options);
    this.field = field;
  }
}

/** A signing key (secret or public) that is malformed. Never carries the key text. */
export class InvalidKeyError extends NixFormatError {}

/** A `Sig:` value that is not `<key name>:<base64 of 64 bytes>`. */
export class InvalidSignatureError extends NixFormatError {}

/** Bytes that are not a NAR (or a NAR Nix would reject). */
export class NarFormatError extends NixFormatError {}

/** A realisation path or document that is not in one of the forms Nix writes. */
export class InvalidRealisationError extends NixFormatError {}

/** Quotes an untrusted value for an error message, cut to a readable length. */
export function quoteForError(value: string, max = 80): string {
  const cut = value.length > max ? `${value.slice(0, max)}…` : value;
  return JSON.stringify(cut);
}
