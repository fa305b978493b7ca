/**
 * Rebuilds a volume's LBA map from its TLogs and SCOs after a restart or a crash, and leaves the files
 * ready for appending. The rules (docs/tlog-format.md "Replay", docs/volume-driver.md "Recovery"):
 * - every TLog but the last must be complete and end with TLOG_CLOSED;
 * - the last TLog's torn tail ends the replay, unless a valid SYNC follows the damage (CORRUPT);
 * - a WRITE whose cluster checksum does not match the SCO is dropped after the durable point (the last
 *   SYNC) and the TLog is cut there; before the durable point it is CORRUPT;
 * - a SCO left open by the crash is sealed (truncated after its last kept slot, footer written) and
 *   logged as SCO_CLOSED; a SYNC then marks the recovered state durable.
 */
import path from 'node:path';
import type { Disk } from '../shared/disk.ts';
import { KeelError } from '../shared/errors.ts';
import type { Logger } from '../shared/logger.ts';
import { LbaMap, packLocation } from './lba-map.ts';
import { parseScoFileName, scoFileName } from './sco-format.ts';
import { readScoFooter, scanClusterChecksums, sealCrashedSco } from './sco-file.ts';
import { encodeTlogRecordToBuffer, parseTlogFileName, tlogFileName, type TlogRecord } from './tlog-format.ts';

type WriteRecord = Extract<TlogRecord, { type: 'write' }>;
import { scanTlog } from './tlog-reader.ts';
import { TlogWriter } from './tlog-writer.ts';

export interface RecoveryOptions {
  disk: Disk;
  scoDir: string;
  tlogDir: string;
  clustersPerSco: number;
  logger: Logger;
  /**
   * The crc table of a sealed SCO that is not on local disk (evicted from the write buffer, or a volume
   * restored from the backend): fetched from its backend copy. Without it such a SCO is missing.
   */
  remoteTable?: (sco: number) => Promise<Uint32Array | undefined | 'unreadable'>;
  /**
   * SCOs the scrubber deleted (scrubbed-scos.json): nothing live maps into them, so WRITE records that
   * point there are replayed without a checksum check; later records overwrite them.
   */
  deletedScos?: ReadonlySet<number>;
  /** New SCO numbers start above this (SCOs of this volume may exist in the backend beyond its TLogs). */
  scoSeqFloor?: number;
}

export interface RecoveredVolume {
  map: LbaMap;
  tlog: TlogWriter;
  nextScoSeq: number;
  tlogCount: number;
  scoCount: number;
  replayedWrites: number;
  /** Records cut from the end of the last TLog: torn records and unflushed writes whose data was torn. */
  discardedRecords: number;
  sealedScos: number[];
  /** SCO -> the TLog holding its SCO_CLOSED record (the upload pipeline evicts by it). */
  scoClosedIn: Map<number, number>;
}

/** Sorted sequence numbers of the files in a directory that parse. */
export async function listSeqs(disk: Disk, dir: string, parse: (name: string) => number | undefined): Promise<number[]> {
  const seqs: number[] = [];
  for (const name of await disk.list(dir)) {
    const seq = parse(name);
    if (seq !== undefined) seqs.push(seq);
  }
  return seqs.sort((a, b) => a - b);
}

interface ScoChecksums {
  table: Uint32Array;
  sealed: boolean;
  /**
   * The SCO is in the backend but cannot be read there (more than m fragments lost or damaged): its
   * records are taken as the TLogs say, without a check. Its clusters then fail reads with EIO, as they
   * do on an open volume, instead of the whole volume failing to open.
   */
  unreadable?: boolean;
}
const notCached = Symbol('notCached');

/** Per-cluster checksums of the SCOs the replay touches: footers of sealed SCOs, data of open ones. */
class ScoChecksumSource {
  private readonly tables = new Map<number, ScoChecksums | undefined>();
  /** How many tables to keep: replay touches SCOs mostly in order. */
  private static readonly tablesMax = 8;

  constructor(
    private readonly disk: Disk,
    private readonly scoDir: string,
    private readonly clustersPerSco: number,
    private readonly remoteTable?: (sco: number) => Promise<Uint32Array | undefined | 'unreadable'>,
    private readonly deletedScos?: ReadonlySet<number>,
  ) {}

  cached(sco: number): ScoChecksums | undefined | typeof notCached {
    return this.tables.has(sco) ? this.tables.get(sco) : notCached;
  }

  /** Loads a SCO's checksums; undefined when the file does not exist. */
  async load(sco: number): Promise<ScoChecksums | undefined> {
    const filePath = path.join(this.scoDir, scoFileName(sco));
    let entry: ScoChecksums | undefined;
    if (await this.disk.exists(filePath)) {
      const file = await this.disk.open(filePath, 'read');
      try {
        const footer = await readScoFooter(file, sco);
        entry = footer !== undefined ? { table: footer.table, sealed: true } : { table: await scanClusterChecksums(file, this.clustersPerSco), sealed: false };
      } finally {
        await file.close();
      }
    } else if (this.remoteTable !== undefined && this.deletedScos?.has(sco) !== true) {
      // A SCO the scrubber deleted is not fetched: a crash in the middle of its deletion can leave some of
      // its fragments behind, and reading those fails; nothing live maps there anyway.
      const table = await this.remoteTable(sco);
      if (table === 'unreadable') entry = { table: new Uint32Array(0), sealed: true, unreadable: true };
      else entry = table === undefined ? undefined : { table, sealed: true };
    }
    if (this.tables.size >= ScoChecksumSource.tablesMax) this.tables.delete(this.tables.keys().next().value!);
    this.tables.set(sco, entry);
    return entry;
  }
}

export async function recoverVolume(options: RecoveryOptions): Promise<RecoveredVolume> {
  const { disk, scoDir, tlogDir, logger } = options;
  const tlogSeqs = await listSeqs(disk, tlogDir, parseTlogFileName);
  const scoSeqs = await listSeqs(disk, scoDir, parseScoFileName);
  const map = new LbaMap();
  const checksums = new ScoChecksumSource(disk, scoDir, options.clustersPerSco, options.remoteTable, options.deletedScos);
  const scoClosedIn = new Map<number, number>();
  /** Highest kept slot + 1 per SCO, and SCOs whose SCO_CLOSED record was seen. */
  const keptClusters = new Map<number, number>();
  const closedRecorded = new Set<number>();
  let replayedWrites = 0;
  let discardedRecords = 0;
  let scosClosedInLast = 0;
  let lastValidRecords = 0;
  let lastClosed = false;

  const lastSeq = tlogSeqs[tlogSeqs.length - 1];
  let lastSyncIndex = -1;
  if (lastSeq !== undefined) {
    const probe = await scanTlog(disk, path.join(tlogDir, tlogFileName(lastSeq)), lastSeq);
    if (probe.syncAfterInvalid) {
      throw KeelError.corrupt(`TLog ${lastSeq}: damaged records before a SYNC marker`, { tlog: lastSeq });
    }
    lastSyncIndex = probe.lastSyncIndex;
  }

  for (const tlogSeq of tlogSeqs) {
    const isLast = tlogSeq === lastSeq;
    const applyWrite = (record: WriteRecord, index: number, source: ScoChecksums | undefined): boolean => {
      const matches =
        source?.unreadable === true ||
        (source !== undefined && record.slot < source.table.length && source.table[record.slot] === record.dataCrc) ||
        (source === undefined && options.deletedScos?.has(record.sco) === true);
      if (!matches) {
        if (!isLast || index < lastSyncIndex) {
          throw KeelError.corrupt(`TLog ${tlogSeq} record ${index}: SCO ${record.sco} slot ${record.slot} does not match`, {
            tlog: tlogSeq,
            record: index,
            sco: record.sco,
            slot: record.slot,
          });
        }
        return false; // a torn write after the durable point: cut the TLog here
      }
      map.set(record.lba, packLocation(record.sco, record.slot));
      keptClusters.set(record.sco, Math.max(keptClusters.get(record.sco) ?? 0, record.slot + 1));
      replayedWrites += 1;
      return true;
    };
    const scan = await scanTlog(disk, path.join(tlogDir, tlogFileName(tlogSeq)), tlogSeq, (record, index) => {
      if (record.type === 'write') {
        const cached = checksums.cached(record.sco);
        if (cached !== notCached) return applyWrite(record, index, cached);
        return checksums.load(record.sco).then((source) => applyWrite(record, index, source));
      }
      if (record.type === 'trim' || record.type === 'fallthrough') map.deleteRange(record.lba, record.count);
      else if (record.type === 'scoClosed') {
        closedRecorded.add(record.sco);
        scoClosedIn.set(record.sco, tlogSeq);
        if (isLast) scosClosedInLast += 1;
      }
      return true;
    });
    if (!isLast && (!scan.headerValid || !scan.closed || scan.hasInvalidTail)) {
      throw KeelError.corrupt(`TLog ${tlogSeq} is incomplete although later TLogs exist`, { tlog: tlogSeq });
    }
    if (isLast) {
      lastValidRecords = scan.validRecords;
      lastClosed = scan.closed;
      discardedRecords = scan.totalRecords - scan.validRecords;
      if (scan.hasInvalidTail) {
        logger.warn({ tlog: tlogSeq, keptRecords: scan.validRecords, fileRecords: scan.totalRecords }, 'TLog tail discarded');
      }
    }
  }

  const sealedScos = await sealOpenScos(options, scoSeqs, keptClusters, closedRecorded);
  const tlog = await openCurrentTlog(options, lastSeq, lastValidRecords, lastClosed, scosClosedInLast);
  for (const sealed of sealedScos) {
    await tlog.append(encodeTlogRecordToBuffer({ type: 'scoClosed', ...sealed }));
    tlog.noteScoClosed();
    scoClosedIn.set(sealed.sco, tlog.tlogSeq);
  }
  await tlog.append(encodeTlogRecordToBuffer({ type: 'sync' }));
  await tlog.sync();
  await disk.syncDir(tlogDir);

  const maxSco = Math.max(options.scoSeqFloor ?? 0, ...scoSeqs, ...keptClusters.keys(), ...closedRecorded);
  return {
    map,
    tlog,
    nextScoSeq: maxSco + 1,
    tlogCount: (await listSeqs(disk, tlogDir, parseTlogFileName)).length,
    scoCount: scoSeqs.length,
    replayedWrites,
    discardedRecords,
    sealedScos: sealedScos.map((sealed) => sealed.sco),
    scoClosedIn,
  };
}

/** Seals every SCO without a valid footer (left open by a crash) after its last kept cluster. */
async function sealOpenScos(
  options: RecoveryOptions,
  scoSeqs: number[],
  keptClusters: Map<number, number>,
  closedRecorded: Set<number>,
): Promise<Array<{ sco: number; clusterCount: number; tableCrc: number }>> {
  const sealed: Array<{ sco: number; clusterCount: number; tableCrc: number }> = [];
  for (const sco of scoSeqs) {
    const filePath = path.join(options.scoDir, scoFileName(sco));
    const file = await options.disk.open(filePath, 'read');
    let table: Uint32Array | undefined;
    try {
      if ((await readScoFooter(file, sco)) !== undefined) continue;
      if (closedRecorded.has(sco)) {
        throw KeelError.corrupt(`SCO ${sco}: footer damaged although the SCO was closed`, { sco });
      }
      table = await scanClusterChecksums(file, options.clustersPerSco);
    } finally {
      await file.close();
    }
    const clusterCount = keptClusters.get(sco) ?? 0;
    const { tableCrc } = await sealCrashedSco(options.disk, filePath, sco, table, clusterCount);
    options.logger.info({ sco, clusterCount }, 'sealed a SCO left open');
    sealed.push({ sco, clusterCount, tableCrc });
  }
  return sealed;
}

/** Continues the last TLog after its kept records, or starts a new one when it was closed or empty. */
async function openCurrentTlog(
  options: RecoveryOptions,
  lastSeq: number | undefined,
  validRecords: number,
  closed: boolean,
  scosClosed: number,
): Promise<TlogWriter> {
  if (lastSeq !== undefined && !closed && validRecords > 0) {
    return TlogWriter.resume(options.disk, path.join(options.tlogDir, tlogFileName(lastSeq)), lastSeq, validRecords, scosClosed);
  }
  let seq = (lastSeq ?? 0) + 1;
  if (lastSeq !== undefined && validRecords === 0) {
    // Created but its HEADER never made it: nothing in it was ever acknowledged.
    await options.disk.remove(path.join(options.tlogDir, tlogFileName(lastSeq)));
    seq = lastSeq;
  }
  return TlogWriter.create(options.disk, path.join(options.tlogDir, tlogFileName(seq)), seq);
}
