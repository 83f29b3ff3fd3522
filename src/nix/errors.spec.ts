import { describe, expect, it } from 'vitest';
import {
  InvalidHashError,
  InvalidKeyError,
  InvalidNarNameError,
  InvalidSignatureError,
  InvalidStorePathError,
  NarInfoParseError,
  NixFormatError,
  quoteForError,
} from './errors';

describe('Nix format errors', () => {
  it.each([
    ['InvalidHashError', new InvalidHashError('x')],
    ['InvalidStorePathError', new InvalidStorePathError('x')],
    ['InvalidNarNameError', new InvalidNarNameError('x')],
    ['NarInfoParseError', new NarInfoParseError('x')],
    ['InvalidKeyError', new InvalidKeyError('x')],
    ['InvalidSignatureError', new InvalidSignatureError('x')],
  ])('%s is a NixFormatError named after its class', (name, err) => {
    expect(err).toBeInstanceOf(NixFormatError);
    expect(err).toBeInstanceOf(Error);
    expect(err.name).toBe(name);
    expect(err.message).toBe('x');
  });

  it('NarInfoParseError names its field in the message and as a property', () => {
    const err = new NarInfoParseError('is missing', 'NarHash');
    expect(err.message).toBe('NarHash: is missing');
    expect(err.field).toBe('NarHash');
    expect(new NarInfoParseError('bad line').field).toBeUndefined();
  });

  it('keeps the cause', () => {
    const cause = new InvalidHashError('inner');
    expect(new NarInfoParseError('outer', 'FileHash', { cause }).cause).toBe(cause);
  });

  it('quotes values for messages, cut to a readable length', () => {
    expect(quoteForError('a"b')).toBe('"a\\"b"');
    expect(quoteForError('x'.repeat(200))).toBe(`"${'x'.repeat(80)}…"`);
    expect(quoteForError('line\nbreak')).toBe('"line\\nbreak"');
  });
});
