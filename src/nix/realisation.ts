/**
 * Realisations of content-addressed derivation outputs, as binary caches serve them:
 *   `realisations/<drv hash>!<output>.doi` (Nix up to 2.34; the hash is `sha256:<base16>`) with a
 *   document `{"id":"sha256:…!out","outPath":"<hash>-<name>","signatures":[…],
 *   "dependentRealisations":{…}}`, and
 *   `build-trace-v2/<drv base name>/<output>.doi` (newer Nix) with `{"outPath":…,"signatures":[…]}`
 *   whose key is the path.
 * A signature signs a fingerprint: the document without `signatures`, as compact JSON with sorted
 * keys (what nlohmann::json writes).
 */
import { InvalidRealisationError, quoteForError } from './errors';
import { isStorePathBaseName, parseStorePathBaseName } from './store-path';

export type RealisationPath =
  | { form: 'realisations'; id: string; outputName: string }
  | { form: 'build-trace-v2'; drv: string; outputName: string };

const OUTPUT_NAME = /^[A-Za-z0-9+\-._?=]{1,211}$/;
const DRV_OUTPUT_ID = /^(sha256:[0-9a-f]{64})!([A-Za-z0-9+\-._?=]{1,211})$/;

/** Parses the path of a realisation request (without a leading slash); throws for anything else. */
export function parseRealisationPath(path: string): RealisationPath {
  const old = /^realisations\/([^/]+)\.doi$/.exec(path);
  if (old) {
    const id = DRV_OUTPUT_ID.exec(old[1]);
    if (!id) throw new InvalidRealisationError(`invalid realisation id ${quoteForError(old[1])}`);
    return { form: 'realisations', id: old[1], outputName: id[2] };
  }
  const trace = /^build-trace-v2\/([^/]+)\/([^/]+)\.doi$/.exec(path);
  if (trace) {
    const drv = trace[1];
    if (!drv.endsWith('.drv') || !isStorePathBaseName(drv)) {
      throw new InvalidRealisationError(`invalid derivation ${quoteForError(drv)}`);
    }
    if (!OUTPUT_NAME.test(trace[2])) {
      throw new InvalidRealisationError(`invalid output name ${quoteForError(trace[2])}`);
    }
    return { form: 'build-trace-v2', drv, outputName: trace[2] };
  }
  throw new InvalidRealisationError(`invalid realisation path ${quoteForError(path)}`);
}

export interface Realisation {
  /** The output's store path base name. */
  outPath: string;
  /** `<key name>:<base64>` signatures (other forms are ignored). */
  signatures: string[];
  /** Fingerprints a valid signature may sign, most likely first. */
  fingerprints: string[];
}

/** Compact JSON with object keys sorted at every level, as nlohmann::json::dump() writes it. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) =>
      a < b ? -1 : a > b ? 1 : 0,
    );
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** Checks a realisation document fetched for `path` and works out what its signatures sign. */
export function parseRealisation(text: string, path: RealisationPath): Realisation {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new InvalidRealisationError('realisation is not JSON');
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) {
    throw new InvalidRealisationError('realisation is not a JSON object');
  }
  const d = doc as Record<string, unknown>;
  const outPath = typeof d.outPath === 'string' ? d.outPath.replace(/^.*\//, '') : '';
  try {
    parseStorePathBaseName(outPath);
  } catch {
    throw new InvalidRealisationError(`realisation outPath ${quoteForError(String(d.outPath))}`);
  }
  const signatures = Array.isArray(d.signatures)
    ? d.signatures.filter((s): s is string => typeof s === 'string')
    : [];
  const deps =
    typeof d.dependentRealisations === 'object' && d.dependentRealisations !== null
      ? d.dependentRealisations
      : {};
  let fingerprints: string[];
  if (path.form === 'realisations') {
    if (d.id !== path.id) {
      throw new InvalidRealisationError(`realisation is for ${quoteForError(String(d.id))}`);
    }
    fingerprints = [
      canonicalJson({ dependentRealisations: deps, id: path.id, outPath: d.outPath }),
    ];
  } else {
    const key = { drvPath: path.drv, outputName: path.outputName };
    fingerprints = [
      canonicalJson({ key, value: { outPath: d.outPath } }),
      canonicalJson({ key, value: { dependentRealisations: deps, outPath: d.outPath } }),
      canonicalJson({ dependentRealisations: deps, id: key, outPath: d.outPath }),
    ];
  }
  return { outPath, signatures, fingerprints };
}
