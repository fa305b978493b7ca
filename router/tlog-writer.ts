/**
 * Appends records to one TLog file (format: docs/tlog-format.md). The caller (the volume driver's
 * append loop) guarantees one append at a time, so the next position is simply tracked here.
 */
import assert from 'node:assert';
import type { Disk, DiskFile } from '../shared/disk.ts';
import { encodeTlogRecordToBuffer, tlogRecordBytes } from './tlog-format.ts';

export class TlogWriter {
  private appending = false;

  private constructor(
    readonly tlogSeq: number,
    private readonly file: DiskFile,
    private records: number,
    private scosClosed: number,
  ) {}

  /** A new TLog file starting with its HEADER record. */
  static async create(disk: Disk, filePath: string, tlogSeq: number): Promise<TlogWriter> {
    const file = await disk.open(filePath, 'createNew');
    const writer = new TlogWriter(tlogSeq, file, 0, 0);
    await writer.append(encodeTlogRecordToBuffer({ type: 'header', tlogSeq }));
    return writer;
  }

  /**
   * Continues an existing TLog after recovery: truncates whatever follows its `validRecords` records
   * (a torn tail or dropped writes) and appends after them.
   */
  static async resume(disk: Disk, filePath: string, tlogSeq: number, validRecords: number, scosClosed: number): Promise<TlogWriter> {
    const file = await disk.open(filePath, 'readWrite');
    await file.truncate(validRecords * tlogRecordBytes);
    return new TlogWriter(tlogSeq, file, validRecords, scosClosed);
  }

  get recordCount(): number {
    return this.records;
  }
  get scoClosedCount(): number {
    return this.scosClosed;
  }

  /** Appends whole encoded records (length a multiple of 32) with one write. */
  async append(records: Buffer): Promise<void> {
    assert(records.length % tlogRecordBytes === 0, 'TLog appends are whole records');
    assert(!this.appending, 'one TLog append at a time');
    this.appending = true;
    try {
      await this.file.write(records, this.records * tlogRecordBytes);
      this.records += records.length / tlogRecordBytes;
    } finally {
      this.appending = false;
    }
  }

  noteScoClosed(): void {
    this.scosClosed += 1;
  }

  sync(): Promise<void> {
    return this.file.sync();
  }

  close(): Promise<void> {
    return this.file.close();
  }
}
