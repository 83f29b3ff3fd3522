import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeUpstream } from './support/fake-upstream';
import { startNarwhal, type Narwhal } from './support/narwhal-app';
import { nixEnv, nixStorePath, requireNix, run, runOk, type NixStorePath } from './support/nix';

/**
 * The rest of the protocol with the real Nix client: a store path with a directory, an executable
 * and a symlink, published by Nix to a `file://` cache *without* a listing (and with its build log),
 * served through a loopback upstream; `nix store ls`, `nix store cat` and `nix log` against narwhal.
 * narwhal's generated listing is compared with the one Nix itself writes (`write-nar-listing`).
 */

const haveNix = requireNix();

const TREE_NIX = `
builtins.derivation {
  name = "narwhal-e2e-tree";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" ''
    export PATH=/bin:/usr/bin
    echo "narwhal-e2e-tree: building"
    echo "compiling the tree"
    mkdir -p $out/bin $out/share/doc
    printf '#!/bin/sh\\necho hello from the tree\\n' > $out/bin/hello
    chmod +x $out/bin/hello
    ln -s bin/hello $out/hello-link
    echo "some documentation" > $out/share/doc/README
    head -c 100000 /dev/zero > $out/share/zeros
  '' ];
}
`;

describe.skipIf(!haveNix)('the real Nix client: listings and build logs through narwhal', () => {
  let work: string;
  let tree: NixStorePath;
  let drv: string;
  let upstream: FakeUpstream;
  let nw: Narwhal;
  let publicKey: string;
  let clients = 0;

  /** A client invocation with its own narinfo disk cache (see PROTOCOL.md). */
  function client(args: string[]) {
    clients += 1;
    return runOk('nix', args, { env: nixEnv(join(work, `xdg-${clients}`)), timeoutMs: 120_000 });
  }

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'narwhal-e2e-protocol-'));
    const env = nixEnv(join(work, 'xdg-build'));
    const nixFile = join(work, 'tree.nix');
    await writeFile(nixFile, TREE_NIX);
    const built = await runOk('nix-build', [nixFile, '--no-out-link'], { env, timeoutMs: 300_000 });
    tree = nixStorePath(built.stdout.trim().split('\n').at(-1)!);
    drv = (await runOk('nix-store', ['--query', '--deriver', tree.path], { env })).stdout.trim();
    // Make sure a build log exists (a path built by an earlier run has one already).
    const log = await run('nix-store', ['--read-log', drv], { env });
    if (log.code !== 0) {
      await runOk('nix-build', [nixFile, '--no-out-link', '--check'], { env, timeoutMs: 300_000 });
    }
    const sk = join(work, 'up.sk');
    const pk = join(work, 'up.pk');
    await runOk('nix-store', ['--generate-binary-cache-key', 'up-tree-1', sk, pk], { env });
    publicKey = (await readFile(pk, 'utf8')).trim();
    const cache = join(work, 'upstream');
    const reference = join(work, 'reference');
    await runOk(
      'nix',
      ['copy', '--to', `file://${cache}?compression=xz&secret-key=${sk}`, tree.path],
      {
        env,
      },
    );
    await runOk('nix', ['store', 'copy-log', '--to', `file://${cache}`, tree.path], { env });
    await runOk(
      'nix',
      ['copy', '--to', `file://${reference}?compression=none&write-nar-listing=true`, tree.path],
      { env },
    );
    upstream = await FakeUpstream.start({ root: cache });
    nw = await startNarwhal({
      'cache-upstream-url': [upstream.url],
      'cache-upstream-public-key': [publicKey],
    });
    await nw.listen();
  });

  afterAll(async () => {
    await nw?.close();
    await upstream?.close();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('nix store ls and nix store cat work on a path whose upstream has no listing', async () => {
    const ls = await client(['store', 'ls', '--store', nw.url, '-R', tree.path]);
    expect(ls.stdout.split('\n').filter(Boolean).sort()).toEqual(
      [
        './bin',
        './bin/hello',
        './hello-link',
        './share',
        './share/doc',
        './share/doc/README',
        './share/zeros',
      ].sort(),
    );
    const cat = await client(['store', 'cat', '--store', nw.url, `${tree.path}/bin/hello`]);
    expect(cat.stdout).toBe('#!/bin/sh\necho hello from the tree\n');
    // Nix 2.8 reads the NAR for both (it asks for no listing); one upstream download serves both.
    expect(upstream.narGets()).toBe(1);
  });

  it("narwhal's listing, made from the stored NAR, is the one Nix writes", async () => {
    const nar = await fetch(`${nw.url}/${tree.hashPart}.narinfo`);
    expect(nar.status).toBe(200);
    const url = /^URL: (.*)$/m.exec(await nar.text())![1];
    expect((await fetch(`${nw.url}/${url}`)).status).toBe(200); // stored once it is read
    const res = await pollListing(`${nw.url}/${tree.hashPart}.ls`);
    expect(res.status).toBe(200);
    const ours = await res.text();
    const nixs = await readFile(join(work, 'reference', `${tree.hashPart}.ls`), 'utf8');
    expect(JSON.parse(ours)).toEqual(JSON.parse(nixs));
    expect(ours).toBe(nixs);
    expect(upstream.count('GET', `/${tree.hashPart}.ls`)).toBeGreaterThanOrEqual(1);
  });

  it('nix log prints the build log passed through from the upstream', async () => {
    const log = await client(['log', '--store', nw.url, tree.path]);
    expect(log.stdout).toContain('narwhal-e2e-tree: building');
    expect(log.stdout).toContain('compiling the tree');
    const drvName = drv.slice(drv.lastIndexOf('/') + 1);
    expect(upstream.count('GET', `/log/${drvName}`)).toBe(1);
    // Kept: a second client is answered from storage.
    await client(['log', '--store', nw.url, tree.path]);
    expect(upstream.count('GET', `/log/${drvName}`)).toBe(1);
  });
});

/** The listing, once the NAR it is made from has been committed (a moment after it was served). */
async function pollListing(url: string): Promise<Response> {
  for (let i = 0; ; i++) {
    const res = await fetch(url);
    if (res.status !== 404 || i >= 50) return res;
    await new Promise((r) => setTimeout(r, 100));
  }
}
