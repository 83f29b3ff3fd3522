import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { buildConfig, ConfigError, type AppConfig, type RawSettings } from './app-config';
import { envName, SETTINGS } from './settings';

/** Alternative YAML keys accepted for people coming from ncps (plural list names). */
const YAML_ALIASES: Record<string, string> = {
  'cache-upstream-urls': 'cache-upstream-url',
  'cache-upstream-public-keys': 'cache-upstream-public-key',
  'cache-upload-public-keys': 'cache-upload-public-key',
};

export interface ConfigSources {
  /** Values given as CLI flags, by setting name. */
  flags: RawSettings;
  env: NodeJS.ProcessEnv;
  /** Path of a YAML file (`--config` / `NARWHAL_CONFIG`). */
  file?: string;
  cwd?: string;
}

/** Merges flag > env > file > default and validates once. */
export function loadConfig(sources: ConfigSources): AppConfig {
  const fromFile = sources.file ? readYamlSettings(sources.file) : {};
  const merged: RawSettings = {};
  for (const def of SETTINGS) {
    const envValue = sources.env[envName(def.name)];
    merged[def.name] =
      sources.flags[def.name] ??
      (envValue !== undefined && envValue !== '' ? envValue : undefined) ??
      fromFile[def.name];
  }
  return buildConfig(merged, sources.cwd);
}

/** Reads a YAML file whose keys are setting names, flat (`cache-hostname: x`) or nested (`cache: {hostname: x}`). */
export function readYamlSettings(path: string): RawSettings {
  let doc: unknown;
  try {
    doc = parseYaml(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new ConfigError('config', `cannot read ${path}: ${(e as Error).message}`);
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) {
    throw new ConfigError('config', `${path} must hold a mapping of settings`);
  }
  const known = new Set(SETTINGS.map((s) => s.name));
  const out: RawSettings = {};
  const walk = (obj: Record<string, unknown>, prefix: string): void => {
    for (const [k, v] of Object.entries(obj)) {
      const key = prefix ? `${prefix}-${k}` : k;
      if (v === null && !known.has(YAML_ALIASES[key] ?? key)) continue; // a section with every key commented out
      if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
        walk(v as Record<string, unknown>, key);
        continue;
      }
      const name = YAML_ALIASES[key] ?? key;
      if (!known.has(name)) throw new ConfigError('config', `${path}: unknown setting "${key}"`);
      if (v === null || v === undefined) continue;
      out[name] = Array.isArray(v) ? v.map((x) => scalar(x, key)) : scalar(v, key);
    }
  };
  walk(doc as Record<string, unknown>, '');
  return out;
}

/** Settings as they may be shown in logs: secret values replaced. */
export function describeConfig(config: AppConfig): Record<string, unknown> {
  return {
    server: `${config.server.host}:${config.server.port}`,
    hostname: config.hostname,
    dataPath: config.dataPath,
    database: config.database.kind,
    storage:
      config.storage.kind === 'fs'
        ? config.storage
        : {
            kind: 's3',
            bucket: config.storage.bucket,
            endpoint: config.storage.endpoint,
            prefix: config.storage.prefix,
          },
    upstreams: config.upstreams.map((u) => ({
      url: u.url,
      priority: u.priority,
      auth: !!u.authorization,
    })),
    trustedKeys: config.upstreamPublicKeys.map((k) => k.name),
    lru: config.lru,
    lock: config.lock.kind,
    access: {
      put: config.access.allowPut,
      delete: config.access.allowDelete,
      readToken: config.access.requireReadToken,
      trustedSignature: config.access.requireTrustedSignature,
      uploadKeys: config.access.uploadPublicKeys.map((k) => k.name),
    },
  };
}

function scalar(v: unknown, key: string): string {
  if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') return String(v);
  throw new ConfigError('config', `setting "${key}" must be a string, number or boolean`);
}
