import { describe, expect, it } from 'vitest';
import { redactCredentials } from './redact';

describe('redactCredentials', () => {
  it.each([
    ['https://user:pass@cache.example.org/x', 'https://[redacted]@cache.example.org/x'],
    ['https://token@cache.example.org', 'https://[redacted]@cache.example.org'],
    ['postgresql://narwhal:s3cret@db:5432/narwhal', 'postgresql://[redacted]@db:5432/narwhal'],
    [
      'from https://a:b@one.example and redis://:pw@two.example:6379',
      'from https://[redacted]@one.example and redis://[redacted]@two.example:6379',
    ],
    ['connect ECONNREFUSED http://u:p%40ss@host', 'connect ECONNREFUSED http://[redacted]@host'],
  ])('%s', (input, output) => {
    expect(redactCredentials(input)).toBe(output);
  });

  it.each([
    'https://cache.nixos.org/nar/abc.nar.xz',
    'https://host/path?mail=a@b.example',
    'mail me at someone@example.org',
    'cached abc.narinfo from http://127.0.0.1:8080',
  ])('leaves %s alone', (text) => {
    expect(redactCredentials(text)).toBe(text);
  });
});
