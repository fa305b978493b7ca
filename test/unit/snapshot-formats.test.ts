/**
 * The snapshot catalog journal, the export stream codec and the cluster mask: round trips, and bad input
 * (torn lines, flipped bits, truncation, wrong versions) that must be refused, never misread.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { isKeelError } from '../../shared/errors.ts';
import {
  decodeExportHeader,
  decodeExportRecord,
  encodeExportHeader,
  encodeExportRecord,
  exportChecksumBytes,
  exportRecordHeaderBytes,
} from '../../shared/export-stream-format.ts';
import { ClusterMask } from '../../router/cluster-mask.ts';
import { catalogEvents, decodeCatalog, emptyCatalog, encodeCatalogEvent, applyCatalogEvent, type CatalogEvent } from '../../router/snapshot-catalog-format.ts';
import { decodeTlogRecord, encodeTlogRecordToBuffer, type TlogRecord } from '../../router/tlog-format.ts';

const header: CatalogEvent = { e: 'header', format: 'keel-snapshots', version: 1 };

describe('snapshot catalog journal', () => {
  it('folds events in order and survives compaction', () => {
    const events: CatalogEvent[] = [
      header,
      { e: 'create', id: 1, name: 'a', createdAtMs: 10, sizeBytes: 4096 },
      { e: 'create', id: 2, name: 'b', createdAtMs: 20, sizeBytes: 4096, labels: { k: 'v' } },
      { e: 'label', id: 1, labels: { x: 'y' } },
      { e: 'clone', clone: 'c', snapshotId: 2 },
      { e: 'delete', id: 1 },
      { e: 'template', value: true },
    ];
    const { state, tornTail } = decodeCatalog(events.map(encodeCatalogEvent).join(''), 'test');
    expect(tornTail).toBe(false);
    expect([...state.snapshots.values()]).toEqual([{ id: 2, name: 'b', createdAtMs: 20, sizeBytes: 4096, labels: { k: 'v' } }]);
    expect(state).toMatchObject({ template: true, nextId: 3, clones: [{ clone: 'c', snapshotId: 2 }] });
    const compacted = decodeCatalog(catalogEvents(state).map(encodeCatalogEvent).join(''), 'test').state;
    expect(compacted).toEqual(state);
  });

  it('keeps ids unique after the newest snapshot was deleted and the journal compacted', () => {
    const state = emptyCatalog();
    for (const event of [{ e: 'create', id: 7, name: 'x', createdAtMs: 1, sizeBytes: 1 }, { e: 'delete', id: 7 }] as CatalogEvent[]) applyCatalogEvent(state, event);
    expect(decodeCatalog(catalogEvents(state).map(encodeCatalogEvent).join(''), 'test').state.nextId).toBe(8);
  });

  it('ignores a torn last line, refuses damage before it and foreign files', () => {
    const good = [header, { e: 'create', id: 1, name: 'a', createdAtMs: 1, sizeBytes: 1 } as CatalogEvent].map(encodeCatalogEvent).join('');
    expect(decodeCatalog(good + '{"e":"create","id":2,"na', 'test')).toMatchObject({ tornTail: true });
    expect(decodeCatalog(good + '{"e":"crea\n', 'test').tornTail).toBe(true);
    const damaged = good.replace('"create"', '"cr"eate"') + encodeCatalogEvent({ e: 'delete', id: 1 });
    expect(() => decodeCatalog(damaged, 'test')).toThrow(/not JSON/);
    expect(() => decodeCatalog(encodeCatalogEvent({ e: 'delete', id: 1 }), 'test')).toThrow(/not a version 1 snapshot catalog/);
    expect(() => decodeCatalog(encodeCatalogEvent(header) + '{"e":"create","id":-1}\n', 'test')).toThrow(/bad event/);
  });
});

describe('snapshot TLog records', () => {
  it('round-trip and are refused when a bit flips', () => {
    const records: TlogRecord[] = [
      { type: 'snapshot', snapshotId: 2 ** 40 + 3, createdAtMs: 1_795_252_000_000, nameCrc: 0xdeadbeef },
      { type: 'snapshotDeleted', snapshotId: 9 },
      { type: 'fallthrough', lba: 12345, count: 77 },
      { type: 'scoDeleted', sco: 4_000_000_000 },
    ];
    for (const record of records) {
      const bytes = encodeTlogRecordToBuffer(record);
      expect(decodeTlogRecord(bytes, 0)).toEqual(record);
      bytes[5] ^= 0x10;
      expect(decodeTlogRecord(bytes, 0)).toBeUndefined();
    }
  });
});

describe('export stream codec', () => {
  const streamHeader = { volumeSizeBytes: 2 ** 40, fromSnapshot: 'base', toSnapshot: 'snap-é' };

  it('round-trips headers and records', () => {
    expect(decodeExportHeader(encodeExportHeader(streamHeader))).toEqual(streamHeader);
    expect(decodeExportHeader(encodeExportHeader({ ...streamHeader, fromSnapshot: undefined })).fromSnapshot).toBeUndefined();
    const data = Buffer.alloc(2 * 4096, 7);
    const [head, payload, crc] = encodeExportRecord({ type: 'data', lba: 2 ** 33, count: 2, data });
    expect(decodeExportRecord(head, payload, crc, 256)).toEqual({ type: 'data', lba: 2 ** 33, count: 2, data });
    const [zeroHead, zeroCrc] = encodeExportRecord({ type: 'zero', lba: 5, count: 256 });
    expect(decodeExportRecord(zeroHead, Buffer.alloc(0), zeroCrc, 256)).toEqual({ type: 'zero', lba: 5, count: 256 });
  });

  it('refuses every single flipped bit in a header or a record', () => {
    const headerBytes = encodeExportHeader(streamHeader);
    const record = Buffer.concat(encodeExportRecord({ type: 'data', lba: 3, count: 1, data: Buffer.alloc(4096, 9) }));
    fc.assert(
      fc.property(fc.nat(headerBytes.length * 8 - 1), fc.nat(record.length * 8 - 1), (headerBit, recordBit) => {
        const badHeader = Buffer.from(headerBytes);
        badHeader[headerBit >> 3] ^= 1 << (headerBit & 7);
        expect(() => decodeExportHeader(badHeader)).toThrow();
        const bad = Buffer.from(record);
        bad[recordBit >> 3] ^= 1 << (recordBit & 7);
        const head = bad.subarray(0, exportRecordHeaderBytes);
        const crc = bad.subarray(bad.length - exportChecksumBytes);
        let thrown: unknown;
        try {
          decodeExportRecord(head, bad.subarray(exportRecordHeaderBytes, bad.length - exportChecksumBytes), crc, 256);
        } catch (err) {
          thrown = err;
        }
        expect(isKeelError(thrown)).toBe(true);
      }),
      { numRuns: 300 },
    );
  });

  it('refuses counts of zero or above the limit even with a valid crc', () => {
    const [head, crc] = encodeExportRecord({ type: 'zero', lba: 0, count: 0 });
    expect(() => decodeExportRecord(head, Buffer.alloc(0), crc, 256)).toThrow(/0 clusters/);
    const [bigHead, bigCrc] = encodeExportRecord({ type: 'zero', lba: 0, count: 257 });
    expect(() => decodeExportRecord(bigHead, Buffer.alloc(0), bigCrc, 256)).toThrow(/257 clusters/);
  });
});

describe('ClusterMask', () => {
  it('matches a Set under random set/clear ranges', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.boolean(), fc.nat(300), fc.nat(40))), (ops) => {
        const mask = new ClusterMask(16);
        const model = new Set<number>();
        for (const [set, lba, count] of ops) {
          if (set) mask.set(lba, count);
          else mask.clear(lba, count);
          for (let at = lba; at < lba + count; at++) set ? model.add(at) : model.delete(at);
        }
        for (let lba = 0; lba < 360; lba++) expect(mask.has(lba)).toBe(model.has(lba));
      }),
    );
  });
});
