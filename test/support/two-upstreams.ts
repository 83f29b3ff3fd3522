import type { LightMyRequestResponse } from 'fastify';
import { beforeAll } from 'vitest';
import type { RawSettings } from '../../src/config/app-config';
import { FakeUpstream } from './fake-upstream';
import { useNarwhal, type Narwhal } from './narwhal-app';
import { makeKey, type TestKey } from './signing-keys';

/**
 * Two upstreams and three keys: `primary` (priority 10, asked first) and `secondary` (priority 20),
 * with `keyA` and `keyB` trusted and `untrusted` not. Not listening yet.
 */
export interface UpstreamPair {
  keyA: TestKey;
  keyB: TestKey;
  untrusted: TestKey;
  primary: FakeUpstream;
  secondary: FakeUpstream;
  /**
   * The settings for narwhal in front of both (once they listen): `secondary` listed first, so that
   * only its priority puts it second; timeouts of 1 s to connect, 2 s for the response headers and
   * 5 s for a stalled body.
   */
  settings: () => RawSettings;
}

export function upstreamPair(): UpstreamPair {
  const keyA = makeKey('up-a-1');
  const keyB = makeKey('up-b-1');
  const primary = new FakeUpstream();
  const secondary = new FakeUpstream();
  return {
    keyA,
    keyB,
    untrusted: makeKey('evil-1'),
    primary,
    secondary,
    settings: () => ({
      'cache-upstream-url': [`${secondary.url}?priority=20`, `${primary.url}?priority=10`],
      'cache-upstream-public-key': [keyA.publicText, keyB.publicText],
      'cache-upstream-dialer-timeout': '1s',
      'cache-upstream-response-header-timeout': '2s',
      'cache-upstream-body-timeout': '5s',
    }),
  };
}

/**
 * The setup most module tests share: narwhal in front of an UpstreamPair. narwhal also listens on
 * 127.0.0.1 (`nw.url`, `nw.port`) for what inject cannot show.
 *
 * Call it at the top of a test file (or of a describe): it registers the beforeAll that starts all
 * three and the afterAll that stops them (see useNarwhal). The objects it returns can be kept from
 * the start; they are usable once that beforeAll has run.
 */
export interface TwoUpstreams extends Omit<UpstreamPair, 'settings'> {
  nw: Narwhal;
  inject: (method: 'GET' | 'HEAD', url: string) => Promise<LightMyRequestResponse>;
  /** A GET with a Range header. */
  injectRange: (url: string, range: string) => Promise<LightMyRequestResponse>;
}

export function useTwoUpstreams(more: RawSettings = {}): TwoUpstreams {
  const { settings, ...pair } = upstreamPair();
  const nw = useNarwhal([pair.primary, pair.secondary], () => ({ ...settings(), ...more }));
  beforeAll(() => nw.listen());

  return {
    ...pair,
    nw,
    inject: (method, url) => nw.app.inject({ method, url }),
    injectRange: (url, range) => nw.app.inject({ method: 'GET', url, headers: { range } }),
  };
}
