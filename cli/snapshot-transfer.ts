/**
 * `keel snapshot export` / `import`: moves a snapshot, or the changes between two snapshots, through an
 * export stream (shared/export-stream-format.ts, docs/export-stream.md). Export asks the owner for the
 * changed extents (snapshot-diff) and reads them from the read-only export `VOL@SNAP`; import writes
 * into the target volume over the ordinary data ops, flushes, and takes a snapshot named like the
 * stream's, so the next incremental stream finds its base.
 */
import { once } from 'node:events';
import type { Readable, Writable } from 'node:stream';
import type { Coordination } from '../shared/coordination.ts';
import { KeelError } from '../shared/errors.ts';
import { formatSize } from '../shared/sizes.ts';
import { clusterSizeBytes, limits } from '../shared/limits.ts';
import {
  decodeExportHeader,
  decodeExportRecord,
  encodeExportHeader,
  encodeExportRecord,
  exportChecksumBytes,
  exportHeaderBytes,
  exportHeaderFixedBytes,
  exportRecordDataBytes,
  exportRecordHeaderBytes,
} from '../shared/export-stream-format.ts';
import type { RpcClient } from '../shared/wire/rpc-client.ts';
import { connectToOwner, volumeAdmin } from './router-admin.ts';

interface DiffResult {
  sizeBytes: number;
  extents: Array<{ lba: number; count: number; mapped: boolean }>;
}

export interface TransferStats {
  dataClusters: number;
  zeroClusters: number;
  records: number;
  bytes: number;
}

export async function exportSnapshot(coordination: Coordination, volume: string, snapshot: string, from: string | undefined, out: Writable): Promise<TransferStats> {
  const diff = await volumeAdmin<DiffResult>(coordination, volume, { op: 'snapshot-diff', to: snapshot, ...(from ? { from } : {}) });
  const stats: TransferStats = { dataClusters: 0, zeroClusters: 0, records: 0, bytes: 0 };
  const emit = async (buffers: Buffer[]) => {
    for (const buffer of buffers) {
      stats.bytes += buffer.length;
      if (!out.write(buffer)) await once(out, 'drain');
    }
  };
  await emit([encodeExportHeader({ volumeSizeBytes: diff.sizeBytes, fromSnapshot: from, toSnapshot: snapshot })]);
  const client = await connectToOwner(coordination, volume);
  try {
    const handle = await openHandle(client, `${volume}@${snapshot}`);
    for (const extent of diff.extents) {
      for (let lba = extent.lba; lba < extent.lba + extent.count; lba += limits.exportExtentClustersMax) {
        const count = Math.min(limits.exportExtentClustersMax, extent.lba + extent.count - lba);
        if (!extent.mapped) {
          await emit(encodeExportRecord({ type: 'zero', lba, count }));
          stats.zeroClusters += count;
        } else {
          const { payload } = await client.request({ op: 'read', handle, offset: lba * clusterSizeBytes, length: count * clusterSizeBytes });
          await emit(encodeExportRecord({ type: 'data', lba, count, data: payload }));
          stats.dataClusters += count;
        }
        stats.records += 1;
      }
    }
    await emit(encodeExportRecord({ type: 'end', count: stats.records }));
    await client.request({ op: 'close', handle });
  } finally {
    client.close();
  }
  return stats;
}

export async function importSnapshot(
  coordination: Coordination,
  volume: string,
  input: Readable,
  { force = false } = {},
): Promise<TransferStats & { snapshot: string; fromSnapshot: string | undefined }> {
  const reader = new ExactReader(input);
  const fixed = await reader.read(exportHeaderFixedBytes);
  const rest = await reader.read(exportHeaderBytes(fixed) - exportHeaderFixedBytes);
  const header = decodeExportHeader(Buffer.concat([fixed, rest]));
  const record = await coordination.getVolume(volume);
  if (!record) throw KeelError.volumeNotFound(volume);
  if (record.sizeBytes < header.volumeSizeBytes) {
    // The volume is the wrong size, not the command malformed: exit 1 (2 is for malformed arguments).
    throw new KeelError(
      'OUT_OF_RANGE',
      `volume '${volume}' (${formatSize(record.sizeBytes)}) is smaller than the stream's volume (${formatSize(header.volumeSizeBytes)}): resize it first (keel volume resize ${volume} ${header.volumeSizeBytes})`,
      { volume, sizeBytes: record.sizeBytes, streamSizeBytes: header.volumeSizeBytes },
    );
  }
  const listed = await volumeAdmin<{ snapshots: Array<{ name: string }> }>(coordination, volume, { op: 'snapshot-list' });
  if (header.fromSnapshot !== undefined && !listed.snapshots.some((s) => s.name === header.fromSnapshot)) {
    throw KeelError.snapshotNotFound(volume, `${header.fromSnapshot}' (the base of this incremental stream; import the full stream first`);
  }
  if (listed.snapshots.some((s) => s.name === header.toSnapshot)) throw KeelError.snapshotExists(volume, header.toSnapshot);
  if (header.fromSnapshot !== undefined && !force) await refuseIfChangedSince(coordination, volume, header.fromSnapshot);
  const stats: TransferStats = { dataClusters: 0, zeroClusters: 0, records: 0, bytes: 0 };
  const client = await connectToOwner(coordination, volume);
  try {
    const handle = await openHandle(client, volume);
    if (header.fromSnapshot === undefined) {
      // A full stream: the volume becomes exactly the snapshot, whatever it held before.
      for (let offset = 0; offset < record.sizeBytes; offset += limits.nbdRequestBytesMax) {
        await client.request({ op: 'trim', handle, offset, length: Math.min(limits.nbdRequestBytesMax, record.sizeBytes - offset), fua: false });
      }
    }
    for (;;) {
      const head = await reader.read(exportRecordHeaderBytes);
      const data = await reader.read(exportRecordDataBytes(head));
      const crc = await reader.read(exportChecksumBytes);
      const item = decodeExportRecord(head, data, crc, limits.exportExtentClustersMax);
      if (item.type === 'end') {
        if (item.count !== stats.records) throw KeelError.corrupt(`export stream ends after ${stats.records} records, its trailer says ${item.count}`);
        break;
      }
      const offset = item.lba * clusterSizeBytes;
      const length = item.count * clusterSizeBytes;
      if (offset + length > header.volumeSizeBytes + clusterSizeBytes) throw KeelError.corrupt(`export stream record beyond the volume (lba ${item.lba})`);
      if (item.type === 'data') {
        await client.request({ op: 'write', handle, offset, fua: false }, item.data);
        stats.dataClusters += item.count;
      } else {
        await client.request({ op: 'trim', handle, offset, length, fua: false });
        stats.zeroClusters += item.count;
      }
      stats.records += 1;
      stats.bytes += length;
    }
    await client.request({ op: 'flush', handle });
    await client.request({ op: 'close', handle });
  } finally {
    client.close();
  }
  await volumeAdmin(coordination, volume, { op: 'snapshot-create', name: header.toSnapshot });
  return { ...stats, snapshot: header.toSnapshot, fromSnapshot: header.fromSnapshot };
}

async function openHandle(client: RpcClient, exportName: string): Promise<number> {
  const { header } = await client.request({ op: 'open', volume: exportName });
  if (typeof header.handle !== 'number') throw KeelError.protocol('open reply lacks a handle');
  return header.handle;
}

/**
 * An incremental stream holds the changes from its base to its snapshot: applied on a volume that changed
 * since its base, the result is neither (zfs receive refuses the same way without -F).
 */
async function refuseIfChangedSince(coordination: Coordination, volume: string, base: string): Promise<void> {
  const diff = await volumeAdmin<DiffResult>(coordination, volume, { op: 'snapshot-diff', from: base });
  if (diff.extents.length === 0) return;
  throw new KeelError(
    'DIVERGED',
    `volume '${volume}' changed since snapshot '${base}' (${diff.extents.length} extents): this incremental stream applies only to '${base}' as it was; ` +
      `roll back first (keel snapshot rollback ${volume} ${base}), or import with --force to apply it on top`,
    { volume, base, extents: diff.extents.length },
  );
}

/** Reads exact byte counts from a stream (a truncated stream is CORRUPT, never a hang). */
class ExactReader {
  private readonly iterator: AsyncIterator<Buffer>;
  private pending: Buffer = Buffer.alloc(0);

  constructor(input: Readable) {
    this.iterator = input[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  }

  async read(length: number): Promise<Buffer> {
    while (this.pending.length < length) {
      const next = await this.iterator.next();
      if (next.done) throw KeelError.corrupt(`export stream truncated (wanted ${length} more bytes, got ${this.pending.length})`);
      this.pending = this.pending.length === 0 ? next.value : Buffer.concat([this.pending, next.value]);
    }
    const result = this.pending.subarray(0, length);
    this.pending = this.pending.subarray(length);
    return result;
  }
}
