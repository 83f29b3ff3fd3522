import { Injectable } from '@nestjs/common';

/**
 * What went wrong: a narinfo without a trusted signature, a narinfo rejected otherwise (malformed,
 * too large, for another path), a NAR whose bytes do not match its narinfo, a NAR download that
 * broke, an upstream that failed to answer (timeout, connection, a status other than 200/404/410).
 */
export type FailureKind =
  'bad-signature' | 'invalid-narinfo' | 'hash-mismatch' | 'download-failed' | 'upstream-error';

/** One entry of the status page's recent failures. Never carries credentials or query strings. */
export interface RecentFailure {
  kind: FailureKind;
  /** The upstream's base URL (as in metrics labels), or null when none was involved. */
  upstream: string | null;
  /** What it was about: `<hash>.narinfo`, `nar/<name>` (no query string). */
  subject: string;
  message: string;
  /** How often it happened in a row (same kind, upstream and message); `subject` is the latest. */
  count: number;
  /** When it first and last happened (ISO 8601). */
  firstAt: string;
  at: string;
}

export interface FailureReport {
  upstream?: string | null;
  subject: string;
  message: string;
}

/** How many failures are kept (the page shows them all). */
export const RECENT_FAILURES_KEPT = 50;
const MAX_TEXT = 300;

/**
 * A small ring of the latest failures, newest first, that the narinfo and NAR flows report to. Only
 * failure paths call it, so it costs nothing on a healthy request. A failure equal to one already
 * kept (same kind, upstream and message: an upstream that keeps timing out) bumps that entry's count
 * and moves it to the front instead of pushing every other failure out.
 */
@Injectable()
export class RecentFailures {
  private readonly entries: RecentFailure[] = [];

  record(kind: FailureKind, report: FailureReport): void {
    const upstream = report.upstream ? scrubUrls(report.upstream) : null;
    const subject = clip(scrubUrls(report.subject));
    const message = clip(scrubUrls(report.message));
    const at = new Date().toISOString();
    const i = this.entries.findIndex(
      (e) => e.kind === kind && e.upstream === upstream && e.message === message,
    );
    if (i >= 0) {
      const [same] = this.entries.splice(i, 1);
      same.count++;
      same.at = at;
      same.subject = subject;
      this.entries.unshift(same);
      return;
    }
    this.entries.unshift({ kind, upstream, subject, message, count: 1, firstAt: at, at });
    if (this.entries.length > RECENT_FAILURES_KEPT) this.entries.pop();
  }

  /** The kept failures, newest first (copies). */
  list(): RecentFailure[] {
    return this.entries.map((e) => ({ ...e }));
  }
}

/** A URL in text: scheme, optional `user:password@`, the rest up to whitespace. */
const URL_IN_TEXT = /\b([a-z][a-z0-9+.-]*:\/\/)(?:[^\s/?#@]*@)?([^\s?#]*)(?:[?#][^\s]*)?/gi;

/**
 * Every URL in `text` without its credentials, query string and fragment (upstream tokens often
 * ride in one of them): `https://u:p@host/x?token=t` → `https://host/x`.
 */
export function scrubUrls(text: string): string {
  return text.replace(URL_IN_TEXT, '$1$2');
}

function clip(text: string): string {
  return text.length > MAX_TEXT ? `${text.slice(0, MAX_TEXT - 1)}…` : text;
}
