/**
 * Where the bytes of an uploaded narinfo or NAR came from, as recorded in their `upstream_url`
 * column: `upload:<token name>`. No upstream has them, so none is ever asked for them.
 */
const PREFIX = 'upload:';

export function uploadOrigin(tokenName: string): string {
  return PREFIX + tokenName;
}

export function isUploadOrigin(upstreamUrl: string): boolean {
  return upstreamUrl.startsWith(PREFIX);
}
