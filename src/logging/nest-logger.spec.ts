import { describe, expect, it } from 'vitest';
import { PinoNestLogger } from './nest-logger';
import { createPinoLogger } from './pino-logger';
import { runInRequestContext } from './request-context';
import type { LogLevel } from '../config/app-config';

function capture(level: LogLevel = 'verbose') {
  const lines: Record<string, unknown>[] = [];
  const pino = createPinoLogger({
    level,
    pretty: false,
    destination: {
      write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>),
    },
  });
  return { lines, pino, nest: new PinoNestLogger(pino) };
}

describe('PinoNestLogger', () => {
  it('maps Nest levels to pino levels and the last string parameter to `context`', () => {
    const { lines, nest } = capture();
    nest.log('a', 'narinfo');
    nest.warn('b', 'nar');
    nest.debug('c', 'lru');
    nest.verbose('d', 'lru');
    nest.fatal('e', 'main');
    expect(lines.map((l) => [l.level, l.context, l.msg])).toEqual([
      ['info', 'narinfo', 'a'],
      ['warn', 'nar', 'b'],
      ['debug', 'lru', 'c'],
      ['trace', 'lru', 'd'],
      ['fatal', 'main', 'e'],
    ]);
  });

  it('takes `error(message, stack, context)` apart, and an Error as `err`', () => {
    const { lines, nest } = capture();
    nest.error('failed', 'Error: x\n    at y', 'http');
    nest.error('no stack', undefined, 'http');
    nest.error(new Error('thrown'), 'lru');
    expect(lines[0]).toMatchObject({ level: 'error', context: 'http', msg: 'failed' });
    expect(lines[0].stack).toBe('Error: x\n    at y');
    expect(lines[1]).toMatchObject({ msg: 'no stack', context: 'http' });
    expect(lines[1]).not.toHaveProperty('stack');
    expect(lines[2]).toMatchObject({ msg: 'thrown', context: 'lru', err: { message: 'thrown' } });
  });

  it('writes Nest’s framework chatter at debug', () => {
    const { lines, nest } = capture('info');
    nest.log('Mapped {/x, GET} route', 'RouterExplorer');
    nest.log('AppModule dependencies initialized', 'InstanceLoader');
    nest.log('real news', 'narinfo');
    expect(lines.map((l) => l.msg)).toEqual(['real news']);
  });

  it('respects the level', () => {
    const { lines, nest } = capture('warn');
    nest.log('info line', 'x');
    nest.debug('debug line', 'x');
    nest.warn('warn line', 'x');
    expect(lines.map((l) => l.msg)).toEqual(['warn line']);
  });

  it('adds the reqId of the request the code runs for, across awaits', async () => {
    const { lines, nest } = capture();
    await runInRequestContext({ reqId: 'req-42' }, async () => {
      await new Promise((done) => setTimeout(done, 1));
      nest.log('inside', 'narinfo');
    });
    nest.log('outside', 'narinfo');
    expect(lines[0]).toMatchObject({ msg: 'inside', reqId: 'req-42' });
    expect(lines[1]).not.toHaveProperty('reqId');
  });
});

describe('createPinoLogger', () => {
  it('writes JSON lines with an ISO time and the level as a word', () => {
    const { lines, pino } = capture('info');
    pino.info('hello');
    expect(lines[0]).toMatchObject({ level: 'info', msg: 'hello' });
    expect(lines[0].time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  });

  it('censors authorization and cookie headers wherever a request or headers are logged', () => {
    const { lines, pino } = capture('info');
    pino.info(
      {
        req: { headers: { authorization: 'Basic c2VjcmV0', cookie: 'a=secret', host: 'h' } },
        res: { headers: { 'set-cookie': 'b=secret' } },
        headers: { 'proxy-authorization': 'secret' },
      },
      'headers',
    );
    const text = JSON.stringify(lines[0]);
    expect(text).not.toContain('secret');
    expect(text).not.toContain('c2VjcmV0');
    expect(lines[0]).toMatchObject({ req: { headers: { host: 'h' } } });
  });

  it('removes credentials from URLs in messages, string fields and errors', () => {
    const { lines, pino, nest } = capture('info');
    pino.info('fetching https://user:pa55@up.example/x');
    pino.info({ url: 'https://user:pa55@up.example/x', n: 1 }, 'field');
    pino.error({ err: new Error('ECONNREFUSED postgresql://n:pa55@db/x') }, 'failed');
    nest.warn('from https://u:pa55@up.example', 'upstream');
    expect(JSON.stringify(lines)).not.toContain('pa55');
    expect(lines[0].msg).toBe('fetching https://[redacted]@up.example/x');
    expect(lines[1]).toMatchObject({ url: 'https://[redacted]@up.example/x', n: 1 });
  });
});
