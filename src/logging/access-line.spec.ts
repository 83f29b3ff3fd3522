import { describe, expect, it } from 'vitest';
import { accessLineWriter } from './access-line';
import { createPinoLogger } from './pino-logger';

function capture(level: 'info' | 'warn') {
  const lines: string[] = [];
  const logger = createPinoLogger({
    level,
    pretty: false,
    destination: { write: (line: string) => void lines.push(line) },
  });
  return { logger, lines };
}

const withoutTime = (line: string) => {
  const { time, ...rest } = JSON.parse(line) as Record<string, unknown>;
  expect(time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  return rest;
};

describe('accessLineWriter', () => {
  it('writes the line pino writes for the same fields, byte for byte apart from the time', () => {
    const { logger, lines } = capture('info');
    const fields = {
      reqId: 'r-1',
      method: 'GET',
      url: '/nar/x.nar.xz?q="quoted"\\',
      statusCode: 200,
      responseTime: 3,
    };
    expect(accessLineWriter(logger)('info', fields, 'request completed')).toBe(true);
    logger.info(fields, 'request completed');
    expect(lines).toHaveLength(2);
    expect(withoutTime(lines[0])).toEqual(withoutTime(lines[1]));
    expect(Object.keys(withoutTime(lines[0]))).toEqual(Object.keys(withoutTime(lines[1])));
    expect(lines[0].endsWith('}\n')).toBe(true);
  });

  it('marks an aborted response and scrubs credentials from the URL', () => {
    const { logger, lines } = capture('info');
    const write = accessLineWriter(logger);
    write(
      'info',
      {
        reqId: 'r-2',
        method: 'GET',
        url: '/x?u=http://user:secret@host/',
        statusCode: 200,
        responseTime: 1,
        aborted: true,
      },
      'response aborted',
    );
    const line = JSON.parse(lines[0]) as Record<string, unknown>;
    expect(line).toMatchObject({ aborted: true, msg: 'response aborted', level: 'info' });
    expect(lines[0]).not.toContain('secret');
  });

  it('writes nothing for a level that is not enabled', () => {
    const { logger, lines } = capture('warn');
    const write = accessLineWriter(logger);
    const f = { reqId: 'r', method: 'GET', url: '/', statusCode: 200, responseTime: 0 };
    expect(write('info', f, 'request completed')).toBe(false);
    expect(write('debug', f, 'request completed')).toBe(false);
    expect(lines).toEqual([]);
  });

  it('writes every URL and id as JSON would, escaping only what needs it', () => {
    const { logger, lines } = capture('info');
    const write = accessLineWriter(logger);
    const texts = [
      '/plain.narinfo',
      '/a"b',
      '/a\\b',
      '/tab\there',
      '/ünï€',
      '/\u2028x',
      '/x\u007f',
      '',
    ];
    for (const text of texts) {
      write(
        'info',
        { reqId: text, method: 'GET', url: text, statusCode: 200, responseTime: 0 },
        'm',
      );
    }
    const parsed = lines.map((l) => JSON.parse(l) as { reqId: string; url: string });
    expect(parsed.map((p) => p.url)).toEqual(texts);
    expect(parsed.map((p) => p.reqId)).toEqual(texts);
  });
});
