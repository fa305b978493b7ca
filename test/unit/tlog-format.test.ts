import { describe, expect, it } from 'vitest';
import {
  decodeTlogRecord,
  encodeTlogRecordToBuffer,
  encodeWriteRecord,
  parseTlogFileName,
  tlogFileName,
  tlogRecordBytes,
  type TlogRecord,
} from '../../router/tlog-format.ts';

const samples: TlogRecord[] = [
  { type: 'header', tlogSeq: 7 },
  { type: 'write', lba: 2 ** 38 - 1, sco: 2 ** 32 - 1, slot: 65535, dataCrc: 0xdeadbeef },
  { type: 'write', lba: 0, sco: 1, slot: 0, dataCrc: 0 },
  { type: 'trim', lba: 12345, count: 2 ** 40 },
  { type: 'sync' },
  { type: 'scoClosed', sco: 42, clusterCount: 16384, tableCrc: 0x12345678 },
  { type: 'tlogClosed', tlogSeq: 9, recordCount: 1 << 20 },
];

describe('TLog record codec', () => {
  it('round-trips every record type', () => {
    for (const record of samples) {
      const buffer = encodeTlogRecordToBuffer(record);
      expect(buffer.length).toBe(tlogRecordBytes);
      expect(decodeTlogRecord(buffer, 0)).toEqual(record);
    }
  });

  it('encodes WRITE records in place at any offset, identical to the generic encoder', () => {
    const target = Buffer.alloc(tlogRecordBytes * 3, 0xaa);
    encodeWriteRecord(target, tlogRecordBytes, 77, 3, 9, 0xcafe);
    expect(target.subarray(tlogRecordBytes, 2 * tlogRecordBytes)).toEqual(
      encodeTlogRecordToBuffer({ type: 'write', lba: 77, sco: 3, slot: 9, dataCrc: 0xcafe }),
    );
    expect(target[0]).toBe(0xaa);
    expect(target[2 * tlogRecordBytes]).toBe(0xaa);
  });

  it('rejects any single flipped bit, all-zero and truncated records', () => {
    const buffer = encodeTlogRecordToBuffer(samples[1]);
    for (let bit = 0; bit < tlogRecordBytes * 8; bit++) {
      const copy = Buffer.from(buffer);
      copy[bit >> 3] ^= 1 << (bit & 7);
      expect(decodeTlogRecord(copy, 0)).toBeUndefined();
    }
    expect(decodeTlogRecord(Buffer.alloc(tlogRecordBytes), 0)).toBeUndefined();
    expect(decodeTlogRecord(buffer.subarray(0, 31), 0)).toBeUndefined();
  });

  it('names files by zero-padded sequence number', () => {
    expect(tlogFileName(12)).toBe('00000012.tlog');
    expect(parseTlogFileName('00000012.tlog')).toBe(12);
    expect(parseTlogFileName('00000012.tlog.tmp')).toBeUndefined();
  });
});
