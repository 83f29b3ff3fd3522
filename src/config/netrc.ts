/**
 * netrc files (`--netrc-file`), the credentials format Nix and curl read: whitespace-separated
 * tokens `machine HOST login USER password SECRET` (also `account`, and `macdef NAME` whose body
 * runs to the next blank line). Values may be double-quoted with `\` escapes, as curl allows.
 *
 * Only `machine` entries are kept: a `default` entry names no host, and narwhal sends credentials
 * to the host they are for and nowhere else.
 */

export interface NetrcEntry {
  login: string;
  password: string;
}

/** Credentials by host name (lower case). The first entry for a host wins, as in curl. */
export type Netrc = ReadonlyMap<string, NetrcEntry>;

/** Splits netrc text into tokens; a `macdef` body is returned as one token. */
function tokenize(text: string): string[] {
  const tokens: string[] = [];
  let i = 0;
  const n = text.length;
  while (i < n) {
    const c = text[i];
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    if (c === '#') {
      // A comment runs to the end of the line.
      while (i < n && text[i] !== '\n') i++;
      continue;
    }
    let token = '';
    if (c === '"') {
      i++;
      while (i < n && text[i] !== '"') {
        if (text[i] === '\\' && i + 1 < n) i++;
        token += text[i++];
      }
      if (i >= n) throw new Error('a quoted value is not closed');
      i++;
    } else {
      while (i < n && !/\s/.test(text[i])) token += text[i++];
    }
    tokens.push(token);
    if (token === 'macdef' && tokens.at(-2) !== 'login' && tokens.at(-2) !== 'password') {
      // Name, then the body up to an empty line: skipped as one token.
      const nameEnd = text.indexOf('\n', i);
      const bodyEnd = nameEnd < 0 ? -1 : text.indexOf('\n\n', nameEnd);
      tokens.push(text.slice(i, nameEnd < 0 ? n : nameEnd).trim());
      i = bodyEnd < 0 ? n : bodyEnd + 2;
    }
  }
  return tokens;
}

/** Parses netrc text. Throws an Error naming the problem for a malformed file. */
export function parseNetrc(text: string): Netrc {
  const tokens = tokenize(text);
  const entries = new Map<string, NetrcEntry>();
  let host: string | null | undefined; // undefined: before any entry; null: `default`
  let login: string | undefined;
  let password: string | undefined;
  const flush = () => {
    if (typeof host === 'string' && !entries.has(host)) {
      entries.set(host, { login: login ?? '', password: password ?? '' });
    }
    login = undefined;
    password = undefined;
  };
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i];
    const value = (): string => {
      const v = tokens[i + 1];
      if (v === undefined) throw new Error(`"${token}" at the end of the file has no value`);
      i++;
      return v;
    };
    switch (token) {
      case 'machine':
        flush();
        host = value().toLowerCase();
        break;
      case 'default':
        flush();
        host = null;
        break;
      case 'login':
        login = value();
        break;
      case 'password':
        password = value();
        break;
      case 'account':
      case 'macdef':
        value();
        break;
      default:
        throw new Error(`unexpected token "${token.slice(0, 20)}" (expected machine, login, …)`);
    }
    if (host === undefined && (token === 'login' || token === 'password')) {
      throw new Error(`"${token}" before any "machine"`);
    }
  }
  flush();
  return entries;
}

/** The `Authorization` header value for a netrc entry. */
export function basicAuthorization(entry: NetrcEntry): string {
  return `Basic ${Buffer.from(`${entry.login}:${entry.password}`).toString('base64')}`;
}
