import { describe, expect, it } from 'vitest';
import { waitStored } from '../support/narwhal-app';
import { makeStorePath } from '../support/store-paths';
import { useTwoUpstreams } from '../support/two-upstreams';

/** Byte ranges of a NAR (how Nix resumes a download), from storage and from a running download. */

const { keyA, primary, nw, inject, injectRange } = useTwoUpstreams();

describe('NAR byte ranges', () => {
  it('a stored NAR advertises byte ranges and answers a Range (Nix resuming) with 206 and those bytes', async () => {
    const f = await makeStorePath([keyA], { size: 300_000 });
    primary.publish(f);
    expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
    const whole = await inject('GET', `/nar/${f.narName}`);
    expect(whole.headers['accept-ranges']).toBe('bytes');
    await waitStored(nw, f.narName, f.file);
    const n = f.file.length;

    const resume = await injectRange(`/nar/${f.narName}`, 'bytes=1000-');
    expect(resume.statusCode).toBe(206);
    expect(resume.headers['x-narwhal-source']).toBe('storage');
    expect(resume.headers['content-range']).toBe(`bytes 1000-${n - 1}/${n}`);
    expect(Number(resume.headers['content-length'])).toBe(n - 1000);
    expect(resume.rawPayload.equals(f.file.subarray(1000))).toBe(true);

    const middle = await injectRange(`/nar/${f.narName}`, 'bytes=10-19');
    expect(middle.statusCode).toBe(206);
    expect(middle.rawPayload.equals(f.file.subarray(10, 20))).toBe(true);
    const tail = await injectRange(`/nar/${f.narName}`, 'bytes=-7');
    expect(tail.rawPayload.equals(f.file.subarray(n - 7))).toBe(true);

    const past = await injectRange(`/nar/${f.narName}`, `bytes=${n}-`);
    expect(past.statusCode).toBe(416);
    expect(past.headers['content-range']).toBe(`bytes */${n}`);
    // Several ranges or nonsense: the whole file, as the RFC allows.
    const several = await injectRange(`/nar/${f.narName}`, 'bytes=0-1,5-6');
    expect(several.statusCode).toBe(200);
    expect(several.rawPayload.equals(f.file)).toBe(true);
    const head = await inject('HEAD', `/nar/${f.narName}`);
    expect(head.headers['accept-ranges']).toBe('bytes');
    expect(primary.count('GET', `/nar/${f.narName}`)).toBe(1);
  });

  it('a Range on a NAR still downloading is served from the download, its end only once verified', async () => {
    const f = await makeStorePath([keyA], { size: 1_500_000 });
    primary.publish(f);
    primary.set(`/nar/${f.narName}`, { kind: 'serve', body: f.file, chunkDelayMs: 5 });
    expect((await inject('GET', `/${f.hash}.narinfo`)).statusCode).toBe(200);
    const n = f.file.length;
    const [whole, ranged, early] = await Promise.all([
      inject('GET', `/nar/${f.narName}`),
      injectRange(`/nar/${f.narName}`, 'bytes=700000-'),
      injectRange(`/nar/${f.narName}`, 'bytes=0-99'),
    ]);
    expect(whole.statusCode).toBe(200);
    expect(ranged.statusCode).toBe(206);
    expect(ranged.headers['x-narwhal-source']).toBe('download');
    expect(ranged.headers['content-range']).toBe(`bytes 700000-${n - 1}/${n}`);
    expect(ranged.rawPayload.equals(f.file.subarray(700000))).toBe(true);
    expect(early.statusCode).toBe(206);
    expect(early.rawPayload.equals(f.file.subarray(0, 100))).toBe(true);
    expect(primary.count('GET', `/nar/${f.narName}`)).toBe(1);
  });
});
