import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SpoolArea } from './spool-area';

const KEY = '1dj881h51cx0jzblhskrwhgymdgsvm3jqn5rk7zjzw4z8vhzyn0b.nar.xz';

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'narwhal-spool-area-'));
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('SpoolArea.newPath', () => {
  it('names every spool of a key differently, also across two areas of one instance (two processes)', () => {
    const a = new SpoolArea(dir, 'http://narwhal-1');
    const b = new SpoolArea(dir, 'http://narwhal-1');
    const paths = [
      ...Array.from({ length: 500 }, () => a.newPath(KEY)),
      ...Array.from({ length: 500 }, () => b.newPath(KEY)),
    ];
    expect(new Set(paths).size).toBe(1000);
    for (const p of paths) {
      expect(p.startsWith(join(dir, `${KEY}.`))).toBe(true);
      expect(p.endsWith('.part')).toBe(true);
    }
  });

  it("keeps a side document's directory out of the name", () => {
    const a = new SpoolArea(dir);
    expect(basename(a.newPath('log/abc-hello.drv'))).toMatch(
      /^log_abc-hello\.drv\.[0-9a-f]{8}\.\w+\.part$/,
    );
  });

  it('tells its own spools from those of another instance sharing the directory', async () => {
    const mine = new SpoolArea(dir, 'http://narwhal-1');
    const theirs = new SpoolArea(dir, 'http://narwhal-2');
    await writeFile(mine.newPath(KEY), 'a');
    await writeFile(theirs.newPath(KEY), 'bb');
    const listed = await mine.list();
    expect(listed.map((f) => [f.own, f.size]).sort()).toEqual([
      [false, 2],
      [true, 1],
    ]);
  });
});
