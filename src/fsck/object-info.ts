import { lstat } from 'node:fs/promises';
import { HeadObjectCommand } from '@aws-sdk/client-s3';
import type { StorageConfig } from '../config/app-config';
import { FilesystemNarStore } from '../storage/filesystem/filesystem-nar-store';
import type { NarStore } from '../storage/nar-store';
import { S3NarStore } from '../storage/s3/s3-nar-store';

/** What fsck needs to know about one stored object beyond `NarStore.stat`. */
export interface ObjectInfo {
  size: number;
  /**
   * When the object last appeared or changed (epoch ms), if the store can tell. Orphans younger than
   * the grace period are left alone: a download may be between committing the object and marking its
   * row stored.
   */
  changedAt?: number;
  /**
   * Identifies this version of the object (inode, ETag, …), so that fsck never deletes an object that
   * narwhal replaced with a fresh download after fsck looked at it. Absent: only the size is compared.
   */
  version?: string;
}

export type ObjectInspector = (key: string) => Promise<ObjectInfo | null>;

/**
 * Picks how to inspect objects of `store`:
 * - filesystem: lstat of the object's file. `changedAt` is the later of mtime (last byte written to
 *   the spool) and ctime (the rename into place updates it on Linux filesystems, and so does anything
 *   else that touches the file, e.g. a restore with preserved mtimes). `version` is device:inode:mtime;
 *   a commit is a rename of a new file, so a re-downloaded object always has a new inode.
 * - S3: HeadObject. `changedAt` is Last-Modified — for a multipart upload that is when the upload
 *   *started*, so for S3 the grace is weaker and fsck relies on re-reading the row just before it
 *   deletes. `version` is the ETag. Needs the bucket from `storage`.
 * - anything else: `NarStore.stat` (no age: orphans are never deleted; no version).
 */
export function inspectorFor(store: NarStore, storage?: StorageConfig): ObjectInspector {
  if (store instanceof FilesystemNarStore) {
    return async (key) => {
      try {
        const s = await lstat(store.pathOf(key));
        if (!s.isFile()) return null;
        return {
          size: s.size,
          changedAt: Math.max(s.mtimeMs, s.ctimeMs),
          version: `${s.dev}:${s.ino}:${s.mtimeMs}`,
        };
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
        throw e;
      }
    };
  }
  if (store instanceof S3NarStore && storage?.kind === 's3') {
    const bucket = storage.bucket;
    return async (key) => {
      try {
        const head = await store.client.send(
          new HeadObjectCommand({ Bucket: bucket, Key: store.objectKeyOf(key) }),
        );
        return {
          size: head.ContentLength ?? 0,
          changedAt: head.LastModified?.getTime(),
          version: head.ETag,
        };
      } catch (e) {
        const name = (e as { name?: unknown } | null)?.name;
        if (name === 'NotFound' || name === 'NoSuchKey') return null;
        throw e;
      }
    };
  }
  return (key) => store.stat(key);
}
