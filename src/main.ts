#!/usr/bin/env -S MALLOC_ARENA_MAX=2 node --max-semi-space-size=2
import 'reflect-metadata';
import { Command, Option } from 'commander';
import { writeFile } from 'node:fs/promises';
import { ConfigError, type AppConfig, type RawSettings } from './config/app-config';
import { describeConfig, loadConfig } from './config/load-config';
import { defaultShown, SETTINGS } from './config/settings';
import { VERSION } from './version';

/** Adds every setting as a flag to a command. */
function withSettings(cmd: Command): Command {
  cmd.option('--config <file>', 'YAML file with settings (env NARWHAL_CONFIG)');
  for (const s of SETTINGS) {
    const flag = s.boolean ? `--${s.name} [bool]` : `--${s.name} <value>`;
    const opt = new Option(flag, `${s.description} (default: ${defaultShown(s)})`);
    if (s.repeatable)
      opt.argParser((v: string, prev: string[] | undefined) => [...(prev ?? []), v]);
    cmd.addOption(opt);
  }
  return cmd;
}

function configFrom(cmd: Command): AppConfig {
  const opts = cmd.opts<Record<string, string | string[] | boolean | undefined>>();
  const flags: RawSettings = {};
  for (const s of SETTINGS) {
    const v = opts[camel(s.name)];
    flags[s.name] = v === true ? 'true' : v === false ? undefined : v;
  }
  const file = (opts.config as string | undefined) ?? process.env.NARWHAL_CONFIG;
  return loadConfig({ flags, env: process.env, file: file || undefined });
}

function camel(name: string): string {
  return name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

async function serve(cmd: Command): Promise<void> {
  const config = configFrom(cmd);
  const { createApp, createLogger } = await import('./bootstrap');
  const { GracefulShutdown } = await import('./shutdown/graceful-shutdown');
  const logger = createLogger(config.logLevel);
  logger.pino.info({ version: VERSION, config: describeConfig(config) }, 'starting narwhal');
  const app = await createApp(config, logger);
  new GracefulShutdown(app, {
    timeoutMs: config.shutdownTimeoutMs,
    logger,
  }).installSignalHandlers();
  await app.listen(config.server.port, config.server.host);
}

async function migrate(cmd: Command): Promise<void> {
  const config = configFrom(cmd);
  const { dataSourceOptions, migrateUnderLock } = await import('./database/data-source');
  const { DataSource } = await import('typeorm');
  const ds = new DataSource(dataSourceOptions(config.database));
  await ds.initialize();
  try {
    // Under the same cross-instance lock as a starting server, so both may run at once.
    const applied = await migrateUnderLock(ds);
    console.log(applied.length ? `applied: ${applied.join(', ')}` : 'schema is up to date');
  } finally {
    await ds.destroy();
  }
}

async function generateKey(name: string, out: string): Promise<void> {
  const { formatPublicKey, formatSecretKey, generateSecretKey } = await import('./signing/keys');
  const key = generateSecretKey(name);
  await writeFile(out, `${formatSecretKey(key)}\n`, { mode: 0o600, flag: 'wx' });
  console.log(formatPublicKey(key));
}

export async function main(argv: string[]): Promise<void> {
  const program = new Command('narwhal').version(VERSION).description('A Nix binary cache proxy.');
  withSettings(
    program.command('serve', { isDefault: true }).description('Serve the cache (default).'),
  ).action((_o, cmd: Command) => serve(cmd));
  withSettings(
    program.command('migrate').description('Bring the database schema up to date, then exit.'),
  ).action((_o, cmd: Command) => migrate(cmd));
  withSettings(
    program
      .command('fsck')
      .description('Check that database and storage agree; exit 1 while problems remain.'),
  )
    .option('--repair', 'fix what is found so that it is fetched again')
    .option('--verify-content', 'also hash every stored NAR (reads all of storage)')
    .option('--dry-run', 'with --repair: report what would be repaired, change nothing')
    .option('--orphan-grace <duration>', 'leave younger objects without a stored row alone', '15m')
    .action(async (_o, cmd: Command) => {
      const config = configFrom(cmd);
      const { runFsckCommand } = await import('./fsck/fsck.command');
      process.exitCode = await runFsckCommand(config, cmd.opts());
    });
  const token = program
    .command('token')
    .description('Manage access tokens (kept in the database: every instance accepts them).');
  withSettings(token.command('create').description('Make a token and print it (only this once).'))
    .requiredOption('--name <name>', 'what logs and `token list` call it')
    .requiredOption('--perm <permissions>', 'comma-separated: read, write, delete, pin, metrics')
    .option('--expires <duration>', 'lifetime, e.g. 90d or 12h (default: until revoked)')
    .action(async (o: { name: string; perm: string; expires?: string }, cmd: Command) => {
      const { runTokenCommand } = await import('./auth/token.command');
      process.exitCode = await runTokenCommand(configFrom(cmd), { create: o });
    });
  withSettings(
    token.command('list').description('List tokens (never the tokens themselves).'),
  ).action(async (_o, cmd: Command) => {
    const { runTokenCommand } = await import('./auth/token.command');
    process.exitCode = await runTokenCommand(configFrom(cmd), { list: true });
  });
  withSettings(
    token
      .command('revoke')
      .description('Revoke a token: every instance refuses it within seconds.'),
  )
    .argument('<name>', 'the token to revoke')
    .action(async (name: string, _o, cmd: Command) => {
      const { runTokenCommand } = await import('./auth/token.command');
      process.exitCode = await runTokenCommand(configFrom(cmd), { revoke: name });
    });
  const pin = program
    .command('pin')
    .description("Pin store paths: the LRU job never evicts a pinned path's closure.");
  for (const [name, description] of [
    ['add', 'Pin store paths (each must be in the cache).'],
    ['rm', 'Unpin store paths.'],
  ] as const) {
    withSettings(pin.command(name).description(description))
      .argument('<paths...>', 'store paths, their base names or hashes')
      .action(async (paths: string[], _o, cmd: Command) => {
        const { runPinCommand } = await import('./pins/pin.command');
        const action = name === 'add' ? { add: paths } : { rm: paths };
        process.exitCode = await runPinCommand(configFrom(cmd), action);
      });
  }
  withSettings(pin.command('list').description('List pins with what their closures hold.')).action(
    async (_o, cmd: Command) => {
      const { runPinCommand } = await import('./pins/pin.command');
      process.exitCode = await runPinCommand(configFrom(cmd), { list: true });
    },
  );
  program
    .command('generate-key')
    .description('Write a new ed25519 secret key file (mode 0600) and print its public key.')
    .requiredOption('--name <name>', 'key name, e.g. cache.example.org-1')
    .requiredOption('--out <file>', 'secret key file to create')
    .action((o: { name: string; out: string }) => generateKey(o.name, o.out));
  await program.parseAsync(argv);
}

main(process.argv).catch((e: unknown) => {
  if (e instanceof ConfigError) {
    console.error(`narwhal: invalid configuration: ${e.message}`);
    process.exit(2);
  }
  console.error(`narwhal: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  process.exit(1);
});
