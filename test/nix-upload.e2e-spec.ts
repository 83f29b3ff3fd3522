import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { BACKENDS, type Backend } from './support/backends';
import { FakeUpstream } from './support/fake-upstream';
import { listFiles } from './support/files';
import { NarwhalProcess, runNarwhalCommand } from './support/narwhal-process';
import {
  NIX_MK,
  nixEnv,
  nixStorePath,
  parseNarInfo,
  requireNix,
  run,
  runOk,
  type NixStorePath,
  type RunResult,
} from './support/nix';
import { makeKey } from './support/signing-keys';

/**
 * Pushing to narwhal with the real Nix client: `nix copy --to http://…` with a token in a netrc
 * file, against `narwhal serve` with uploads and deletes allowed and reads behind a read token;
 * a second client substitutes what was pushed, trusting only narwhal's key; `nix store ls`,
 * `nix store copy-log` and `nix log` on the pushed paths; every kind of bad token refused with
 * nothing stored and no upstream asked; tampered bodies refused; `narwhal token` and `narwhal pin`
 * as an operator runs them; the post-build hook shipped in config/. Runs on each backend (S3 takes
 * uploads as streams).
 */

const haveNix = requireNix();
const REPO_ROOT = resolve(__dirname, '..');

const CLOSURE_NIX = `
let
  ${NIX_MK}
  leaf = mk "narwhal-e2e-push-leaf" "mkdir $out; echo pushed leaf > $out/data";
  mid = mk "narwhal-e2e-push-mid" "mkdir $out; echo \${leaf} > $out/ref";
  top = mk "narwhal-e2e-push-top" "echo narwhal-e2e-push-top: building; mkdir -p $out/bin; echo \${mid} > $out/ref; printf '#!/bin/sh\\\\necho pushed\\\\n' > $out/bin/hello";
in {
  inherit leaf mid top;
  victim = mk "narwhal-e2e-push-victim" "mkdir $out; echo refused > $out/data";
}
`;

describe.skipIf(!haveNix).each(BACKENDS)(
  'pushing to narwhal with the real Nix client on $name',
  (kind) => {
    let backend: Backend | null = null;
    let work: string;
    let dataPath: string;
    let upstream: FakeUpstream;
    let narwhal: NarwhalProcess;
    let narwhalKey: string;
    let paths: Record<'leaf' | 'mid' | 'top' | 'victim', NixStorePath>;
    let topDrv: string;
    const netrc: Record<string, string> = {};
    const tokens: Record<string, string> = {};
    let clients = 0;

    beforeAll(async () => {
      work = await mkdtemp(join(tmpdir(), 'narwhal-e2e-push-'));
      dataPath = join(work, 'data');
      const env = nixEnv(join(work, 'xdg-build'));
      const file = join(work, 'closure.nix');
      await writeFile(file, CLOSURE_NIX);
      const attrs = ['leaf', 'mid', 'top', 'victim'] as const;
      const built = await runOk(
        'nix-build',
        [file, '--no-out-link', ...attrs.flatMap((a) => ['-A', a])],
        {
          env,
          timeoutMs: 300_000,
        },
      );
      const outs = built.stdout.split('\n').filter((l) => l.startsWith('/nix/store/'));
      paths = Object.fromEntries(
        attrs.map((a) => [
          a,
          nixStorePath(outs.find((o) => o.endsWith(`-narwhal-e2e-push-${a}`))!),
        ]),
      ) as typeof paths;
      topDrv = (
        await runOk('nix-store', ['--query', '--deriver', paths.top.path], { env })
      ).stdout.trim();
      if ((await run('nix-store', ['--read-log', topDrv], { env })).code !== 0) {
        await runOk('nix-build', [file, '-A', 'top', '--no-out-link', '--check'], {
          env,
          timeoutMs: 300_000,
        });
      }
      backend = await kind.start();
      if (!backend) return;
      upstream = await FakeUpstream.start(); // has nothing: whatever narwhal serves was pushed
      narwhal = await NarwhalProcess.start({
        dataPath,
        upstreamUrls: [upstream.url],
        upstreamPublicKeys: [makeKey('up-push-1').publicText],
        env: {
          ...backend.env,
          CACHE_ALLOW_PUT_VERB: 'true',
          CACHE_ALLOW_DELETE_VERB: 'true',
          CACHE_REQUIRE_READ_TOKEN: 'true',
          CACHE_TOKEN_RECHECK_INTERVAL: '1s',
          LOG_LEVEL: 'info',
        },
      });
      narwhalKey = await narwhal.publicKey();
      for (const [name, perm] of [
        ['ci', 'read,write'],
        ['fleet', 'read'],
        ['janitor', 'delete'],
      ] as const) {
        tokens[name] = await createToken(name, perm);
        netrc[name] = await netrcFile(name, tokens[name]);
      }
    });

    afterAll(async () => {
      await narwhal?.kill();
      await upstream?.close();
      await backend?.close();
      if (work) {
        await run('chmod', ['-R', 'u+w', work]);
        await rm(work, { recursive: true, force: true });
      }
    });

    beforeEach(({ skip, onTestFailed }) => {
      if (!backend) skip();
      onTestFailed(() => {
        console.error(`--- narwhal output (last 8000 chars) ---\n${narwhal?.logs().slice(-8000)}`);
        console.error(`upstream requests: ${JSON.stringify(upstream?.requests)}`);
      });
    });

    /** The deployment's settings, for the server and for the commands an operator runs. */
    function settings(): Record<string, string> {
      return {
        ...backend!.env,
        CACHE_DATA_PATH: dataPath,
        CACHE_ALLOW_PUT_VERB: 'true',
        CACHE_ALLOW_DELETE_VERB: 'true',
        CACHE_REQUIRE_READ_TOKEN: 'true',
        CACHE_TOKEN_RECHECK_INTERVAL: '1s',
      };
    }

    /** `narwhal <args>` from dist/, with the server's settings. */
    function cli(args: string[]): Promise<RunResult> {
      return runNarwhalCommand(args, settings());
    }

    async function createToken(name: string, perm: string, extra: string[] = []): Promise<string> {
      const made = await cli(['token', 'create', '--name', name, '--perm', perm, ...extra]);
      expect(made.code, made.stderr).toBe(0);
      expect(made.stderr).toContain('shown only this once');
      return made.stdout.trim();
    }

    async function netrcFile(name: string, token: string): Promise<string> {
      const path = join(work, `netrc-${name}`);
      await writeFile(path, `machine 127.0.0.1 login nix password ${token}\n`, { mode: 0o600 });
      return path;
    }

    /** A Nix invocation with its own narinfo disk cache and, when given, a netrc file. */
    function nix(args: string[], netrcPath?: string): Promise<RunResult> {
      clients += 1;
      const options = netrcPath ? ['--option', 'netrc-file', netrcPath] : [];
      return run('nix', [...args, ...options], {
        env: nixEnv(join(work, `xdg-${clients}`)),
        timeoutMs: 120_000,
      });
    }

    async function stored(): Promise<string[]> {
      const files = (await listFiles(join(dataPath, 'store'))).filter((f) => !f.includes('/tmp/'));
      return [...files, ...(await backend!.objectNames())].sort();
    }

    function narinfo(p: NixStorePath, token?: string): Promise<Response> {
      const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
      return fetch(`${narwhal.url}/${p.hashPart}.narinfo`, { headers });
    }

    it('1. nix copy --to with a write token in a netrc file: the whole closure lands', async () => {
      const pushed = await nix(['copy', '--to', narwhal.url, paths.top.path], netrc.ci);
      expect(pushed.code, pushed.stderr).toBe(0);
      for (const p of [paths.leaf, paths.mid, paths.top]) {
        const res = await narinfo(p, tokens.fleet);
        expect(res.status).toBe(200);
        const info = parseNarInfo(await res.text());
        expect(info.fields.get('StorePath')).toBe(p.path);
        expect(info.sigs.some((s) => s.startsWith('narwhal-e2e:'))).toBe(true);
      }
      // Nothing came from the upstream: narwhal only asked it about the paths before they were pushed.
      expect(upstream.requests.filter((r) => !r.url.endsWith('.narinfo'))).toEqual([]);
      expect(
        await narwhal.logsMatching(
          /stored \S+\.narinfo \(\/nix\/store\/\S+-narwhal-e2e-push-top\) uploaded with token \\"ci\\"/,
        ),
      ).toMatch(
        /stored \S+\.narinfo \(\/nix\/store\/\S+-narwhal-e2e-push-top\) uploaded with token \\"ci\\"/,
      );
    });

    it('2. another machine substitutes the pushed closure with a read token, trusting only narwhal', async () => {
      const store = join(work, 'client-store');
      const copied = await nix(
        [
          'copy',
          '--from',
          narwhal.url,
          '--store',
          store,
          '--option',
          'trusted-public-keys',
          narwhalKey,
          paths.top.path,
        ],
        netrc.fleet,
      );
      expect(copied.code, copied.stderr).toBe(0);
      const listed = await nix(['path-info', '--store', store, '-r', paths.top.path]);
      expect(listed.stdout.split('\n').filter(Boolean).sort()).toEqual(
        [paths.leaf.path, paths.mid.path, paths.top.path].sort(),
      );
      // Without a token the same client gets nothing: narinfo and NAR are 401.
      const anonymous = await nix([
        'copy',
        '--from',
        narwhal.url,
        '--store',
        join(work, 'anon-store'),
        '--option',
        'trusted-public-keys',
        narwhalKey,
        paths.top.path,
      ]);
      expect(anonymous.code).not.toBe(0);
      expect((await narinfo(paths.top)).status).toBe(401);
      const url = /^URL: (.*)$/m.exec(await (await narinfo(paths.top, tokens.fleet)).text())![1];
      expect((await fetch(`${narwhal.url}/${url}`)).status).toBe(401);
      expect(
        (
          await fetch(`${narwhal.url}/${url}`, {
            headers: { authorization: `Bearer ${tokens.fleet}` },
          })
        ).status,
      ).toBe(200);
    });

    it('3. nix store ls, nix store copy-log and nix log work on pushed paths', async () => {
      const ls = await nix(
        ['store', 'ls', '--store', narwhal.url, '-R', paths.top.path],
        netrc.fleet,
      );
      expect(ls.code, ls.stderr).toBe(0);
      expect(ls.stdout.split('\n').filter(Boolean).sort()).toEqual([
        './bin',
        './bin/hello',
        './ref',
      ]);
      const pushLog = await nix(
        ['store', 'copy-log', '--to', narwhal.url, paths.top.path],
        netrc.ci,
      );
      expect(pushLog.code, pushLog.stderr).toBe(0);
      const log = await nix(['log', '--store', narwhal.url, paths.top.path], netrc.fleet);
      expect(log.code, log.stderr).toBe(0);
      expect(log.stdout).toContain('narwhal-e2e-push-top: building');
      // A read-only token cannot push a log.
      const refused = await nix(
        ['store', 'copy-log', '--to', narwhal.url, paths.top.path],
        netrc.fleet,
      );
      expect(refused.code).not.toBe(0);
    });

    it('4. no, unknown, read-only, expired and revoked tokens push nothing and ask no upstream', async () => {
      const expired = await createToken('expired', 'read,write', ['--expires', '1s']);
      const revoked = await createToken('revoked', 'read,write');
      expect(
        (
          await fetch(`${narwhal.url}/nix-cache-info`, {
            headers: { authorization: `Bearer ${revoked}` },
          })
        ).status,
      ).toBe(200);
      expect((await cli(['token', 'revoke', 'revoked'])).stdout).toContain('within 1 s');
      await sleep(1200); // past --cache-token-recheck-interval and the expiry
      const cases: [string, string | undefined, boolean][] = [
        ['no token', undefined, true],
        ['an unknown token', await netrcFile('unknown', `nw_${'D'.repeat(43)}`), true],
        ['an expired token', await netrcFile('expired', expired), true],
        ['a revoked token', await netrcFile('revoked', revoked), true],
        // May read (so narwhal looks the path up upstream, as for any read), may not write.
        ['a read-only token', netrc.fleet, false],
      ];
      for (const [what, file, noUpstream] of cases) {
        const before = { files: await stored(), upstream: upstream.requests.length };
        const pushed = await nix(['copy', '--to', narwhal.url, paths.victim.path], file);
        expect({ what, failed: pushed.code !== 0 }).toEqual({ what, failed: true });
        expect({ what, files: await stored() }).toEqual({ what, files: before.files });
        if (noUpstream)
          expect({ what, upstream: upstream.requests.length }).toEqual({
            what,
            upstream: before.upstream,
          });
        else {
          const asked = upstream.requests.slice(before.upstream).map((r) => `${r.method} ${r.url}`);
          expect(asked.every((r) => r === `GET /${paths.victim.hashPart}.narinfo`)).toBe(true);
        }
      }
      expect(
        await narwhal.logsMatching(
          /refused PUT \/nar\/\S+ \(needs write\): token \\"fleet\\" lacks the write permission/,
        ),
      ).toMatch(
        /refused PUT \/nar\/\S+ \(needs write\): token \\"fleet\\" lacks the write permission/,
      );
      expect((await narinfo(paths.victim, tokens.fleet)).status).toBe(404);
      // The right token still works (a miss remembered meanwhile does not hide the upload).
      const pushed = await nix(['copy', '--to', narwhal.url, paths.victim.path], netrc.ci);
      expect(pushed.code, pushed.stderr).toBe(0);
      expect((await narinfo(paths.victim, tokens.fleet)).status).toBe(200);
    });

    it('5. tampered bodies are refused and change nothing', async () => {
      const auth = { authorization: `Bearer ${tokens.ci}` };
      const text = await (await narinfo(paths.top, tokens.ci)).text();
      const url = /^URL: (.*)$/m.exec(text)![1];
      const before = await stored();
      // Bytes that do not hash to the name they are pushed under.
      const fake = `nar/${'1'.repeat(52)}.nar.xz`;
      const bad = await fetch(`${narwhal.url}/${fake}`, {
        method: 'PUT',
        headers: auth,
        body: Buffer.alloc(300_000, 7),
      });
      expect(bad.status).toBe(400);
      // Another narinfo for a path that is here (a different NarHash): 409, not replaced.
      const other = text.replace(
        /^NarSize: (\d+)$/m,
        (_, n: string) => `NarSize: ${Number(n) + 8}`,
      );
      const conflict = await fetch(`${narwhal.url}/${paths.top.hashPart}.narinfo`, {
        method: 'PUT',
        headers: auth,
        body: other,
      });
      expect(conflict.status).toBe(409);
      // A narinfo that names another path than its file name.
      const elsewhere = await fetch(
        `${narwhal.url}/${paths.victim.hashPart.replace(/.$/, (c) => (c === '0' ? '1' : '0'))}.narinfo`,
        { method: 'PUT', headers: auth, body: text },
      );
      expect(elsewhere.status).toBe(400);
      await sleep(200); // a spool removed after the answer
      expect(await stored()).toEqual(before);
      expect((await fetch(`${narwhal.url}/${url}`, { headers: auth })).status).toBe(200);
    });

    it('6. narwhal pin and DELETE, as an operator and a janitor use them', async () => {
      const pinned = await cli(['pin', 'add', paths.top.path]);
      expect(pinned.code, pinned.stderr).toBe(0);
      expect(pinned.stdout).toContain(`pinned ${paths.top.path} (closure: 3 paths`);
      expect((await cli(['pin', 'list'])).stdout).toContain(paths.top.path);
      const notHere = await cli(['pin', 'add', `/nix/store/${'0'.repeat(32)}-nothing`]);
      expect(notHere.code).toBe(1);
      expect((await cli(['pin', 'rm', paths.top.path])).code).toBe(0);
      expect((await cli(['pin', 'list'])).stdout).toBe('');

      const janitor = { authorization: `Bearer ${tokens.janitor}` };
      const refused = await fetch(`${narwhal.url}/${paths.victim.hashPart}.narinfo`, {
        method: 'DELETE',
        headers: { authorization: `Bearer ${tokens.ci}` },
      });
      expect(refused.status).toBe(403);
      const deleted = await fetch(`${narwhal.url}/${paths.victim.hashPart}.narinfo`, {
        method: 'DELETE',
        headers: janitor,
      });
      expect(deleted.status).toBe(200);
      expect((await narinfo(paths.victim, tokens.fleet)).status).toBe(404);
      expect(
        await narwhal.logsMatching(/deleted \S+\.narinfo and nar\/\S+ with token \\"janitor\\"/),
      ).toMatch(/deleted \S+\.narinfo and nar\/\S+ with token \\"janitor\\"/);
      const listed = await cli(['token', 'list']);
      expect(listed.stdout).toMatch(/^ci +read,write +\S+ +20\d\d-/m); // last used: a time
      expect(listed.stdout).not.toContain(tokens.ci);
    });

    it.runIf(kind === BACKENDS[0])(
      '7. the post-build hook in config/ pushes what Nix builds',
      async () => {
        // A derivation no earlier run built: the hook runs only after a real build.
        const file = join(work, 'fresh.nix');
        const name = `narwhal-e2e-hook-${Date.now()}`;
        await writeFile(
          file,
          `builtins.derivation { name = "${name}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "export PATH=/bin:/usr/bin; mkdir $out; echo hooked > $out/data" ]; }`,
        );
        const env = {
          ...nixEnv(join(work, 'xdg-hook')),
          NARWHAL_URL: narwhal.url,
          NIX_CONFIG: `${nixEnv().NIX_CONFIG}\nnetrc-file = ${netrc.ci}`,
        };
        const built = await runOk(
          'nix-build',
          [
            file,
            '--no-out-link',
            '--option',
            'post-build-hook',
            join(REPO_ROOT, 'config', 'post-build-hook.sh'),
          ],
          { env, timeoutMs: 120_000 },
        );
        const out = nixStorePath(built.stdout.trim().split('\n').at(-1)!);
        expect(built.stderr).toContain(`uploading to ${narwhal.url}`);
        expect((await narinfo(out, tokens.fleet)).status).toBe(200);
      },
    );
  },
);
