/**
 * Appends records to one TLog file (format: docs/tlog-format.md). The caller (the volume driver's
 * append loop) guarantees one append at a time, so the next position is simply tracked here.
 */
import assert from 'node:assert';
import type { Disk, DiskFile } from '../shared/disk.ts';
import { isKeelError, KeelError } from '../shared/errors.ts';
import { encodeTlogRecordToBuffer, tlogRecordBytes } from './tlog-format.ts';

export class TlogWriter {
  private appending = false;

  private constructor(
    readonly tlogSeq: number,
    private readonly file: DiskFile,
    private records: number,
    private scosClosed: number,
  ) {}

  /** A new TLog file starting with its HEADER record; if the header cannot be written, no file is left. */
  static async create(disk: Disk, filePath: string, tlogSeq: number): Promise<TlogWriter> {
    const file = await disk.open(filePath, 'createNew');
    const writer = new TlogWriter(tlogSeq, file, 0, 0);
    try {
      await writer.append(encodeTlogRecordToBuffer({ type: 'header', tlogSeq }));
    } catch (err) {
      // Gone, so that the next attempt (after a full disk) can create it again.
      await file.close().catch(() => undefined);
      await disk.remove(filePath).catch(() => undefined);
      throw err;
    }
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

  /**
   * Appends whole encoded records (length a multiple of 32) with one write. A write that fails on a full
   * disk is cut off again (see cutBack), so the file never holds records beyond `recordCount`.
   */
  async append(records: Buffer): Promise<void> {
    assert(records.length % tlogRecordBytes === 0, 'TLog appends are whole records');
    assert(!this.appending, 'one TLog append at a time');
    this.appending = true;
    try {
      await this.file.write(records, this.records * tlogRecordBytes);
      this.records += records.length / tlogRecordBytes;
    } catch (err) {
      if (isKeelError(err, 'NO_SPACE')) await this.cutBack(this.records, err);
      throw err;
    } finally {
      this.appending = false;
    }
  }

  /**
   * Drops every record from `recordCount` on, in the file too: the records of a batch that failed must
   * not stay behind the next, shorter append for replay to find (docs/volume-driver.md, "Disk full").
   * Truncating frees space, so it works on a full disk; if it fails, the TLog's state is unknown (IO).
   */
  async cutBack(recordCount: number, cause: KeelError): Promise<void> {
    assert(recordCount <= this.records, 'cut back beyond the end');
    try {
      await this.file.truncate(recordCount * tlogRecordBytes);
    } catch (err) {
      throw KeelError.io(`TLog ${this.tlogSeq}: could not cut off a failed append (${cause.message})`, err);
    }
    this.records = recordCount;
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
