/**
 * upload.json in a volume directory: what of the volume is already on the backend
 * (docs/backend-volumes.md "Upload manifest"). Replaced atomically after every upload.
 *
 * { "formatVersion": 1, "tlogsUploadedThrough": 7, "scosUploaded": [29, 30] }
 *
 * - tlogsUploadedThrough: every TLog with seq <= this is on the backend (TLogs go up strictly in order).
 *   Only this field governs eviction (a SCO is evictable once the TLog holding its SCO_CLOSED is up), so
 *   it is written only after the TLog's put succeeded: a crash in between re-uploads, never evicts early.
 * - scosUploaded: SCOs on the backend whose closing TLog is not yet up. Only an optimisation (a SCO
 *   missing from it is uploaded again after a restart; an object put is idempotent).
 */
import { KeelError } from '../shared/errors.ts';

export const uploadManifestFileName = 'upload.json';
export const uploadManifestFormatVersion = 1;

export interface UploadManifest {
  tlogsUploadedThrough: number;
  scosUploaded: number[];
}

export function emptyUploadManifest(): UploadManifest {
  return { tlogsUploadedThrough: 0, scosUploaded: [] };
}

export function encodeUploadManifest(manifest: UploadManifest): Buffer {
  const document = { formatVersion: uploadManifestFormatVersion, ...manifest, scosUploaded: [...manifest.scosUploaded].sort((a, b) => a - b) };
  return Buffer.from(JSON.stringify(document) + '\n');
}

/** CORRUPT when the bytes are not a valid manifest. */
export function decodeUploadManifest(bytes: Buffer, where: string): UploadManifest {
  let raw: unknown;
  try {
    raw = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw KeelError.corrupt(`${where}: not JSON`, { reason: (err as Error).message });
  }
  const doc = raw as Record<string, unknown>;
  const isSeq = (value: unknown) => Number.isSafeInteger(value) && (value as number) >= 0;
  if (
    typeof raw !== 'object' ||
    raw === null ||
    doc.formatVersion !== uploadManifestFormatVersion ||
    !isSeq(doc.tlogsUploadedThrough) ||
    !Array.isArray(doc.scosUploaded) ||
    !doc.scosUploaded.every(isSeq)
  )
    throw KeelError.corrupt(`${where}: not an upload manifest of format ${uploadManifestFormatVersion}`);
  return { tlogsUploadedThrough: doc.tlogsUploadedThrough as number, scosUploaded: doc.scosUploaded as number[] };
}
