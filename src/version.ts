import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/** narwhal's version, from package.json (read once at load). */
export const VERSION: string = (
  JSON.parse(readFileSync(join(__dirname, '..', 'package.json'), 'utf8')) as { version: string }
).version;
