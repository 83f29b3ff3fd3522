import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { formatPublicKey, parsePublicKey, parseSecretKey } from '../../src/signing/keys';
import { VERSION } from '../../src/version';
import { HOSTNAME } from '../support/narwhal-app';
import { useTwoUpstreams } from '../support/two-upstreams';

/**
 * What the cache says about itself — /nix-cache-info, /pubkey, / and the health endpoints — for GET
 * and HEAD, through Fastify inject.
 */

const { nw, inject } = useTwoUpstreams();
let narwhalKey: string;

beforeAll(async () => {
  narwhalKey = (await inject('GET', '/pubkey')).body.trim();
});

describe('what the cache says about itself', () => {
  it('GET /nix-cache-info: text/x-nix-cache-info with StoreDir, WantMassQuery and Priority', async () => {
    const res = await inject('GET', '/nix-cache-info');
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/x-nix-cache-info/);
    const lines = res.body.split('\n').filter(Boolean);
    expect(lines).toContain('StoreDir: /nix/store');
    expect(lines).toContain('WantMassQuery: 1');
    expect(lines).toContain('Priority: 40');
    for (const l of lines) expect(l).toMatch(/^[A-Za-z]+: \S+$/);
  });

  it('GET /pubkey: the public half of the key file narwhal generated, named after the hostname', async () => {
    const res = await inject('GET', '/pubkey');
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain/);
    const secret = parseSecretKey(await readFile(join(nw.dataPath, 'secret-key'), 'utf8'));
    expect(res.body.trim()).toBe(formatPublicKey(secret));
    expect(parsePublicKey(res.body).name).toBe(HOSTNAME);
  });

  it('GET /: JSON with hostname, publicKey and version', async () => {
    const res = await inject('GET', '/');
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.json()).toEqual({ hostname: HOSTNAME, publicKey: narwhalKey, version: VERSION });
  });

  it.each(['/nix-cache-info', '/pubkey', '/'])(
    'HEAD %s: 200 with the GET headers and length, no body',
    async (path) => {
      const get = await inject('GET', path);
      const head = await inject('HEAD', path);
      expect(head.statusCode).toBe(200);
      expect(head.body).toBe('');
      expect(head.headers['content-type']).toBe(get.headers['content-type']);
      expect(Number(head.headers['content-length'])).toBe(Buffer.byteLength(get.body));
    },
  );

  it('GET /healthz and /readyz answer 200 with status ok (readyz checks database and storage)', async () => {
    const live = await inject('GET', '/healthz');
    expect(live.statusCode).toBe(200);
    expect(live.json()).toMatchObject({ status: 'ok' });
    const ready = await inject('GET', '/readyz');
    expect(ready.statusCode).toBe(200);
    expect(ready.json()).toMatchObject({
      status: 'ok',
      details: { database: { status: 'up' }, storage: { status: 'up' } },
    });
  });
});
