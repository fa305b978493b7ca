/**
 * What the volume driver calls around every write and trim when the volume's writes must also go to a
 * DTL (router/dtl-journal.ts, docs/dtl.md): the journal records the request, runs `apply` (the driver's own
 * append), and resolves when the request may be acknowledged — in sync mode, once the DTL peer holds it.
 */
export interface WriteJournal {
  /** `clusterCrcs`: crc32c of each 4 KiB cluster of data, when the write is cluster-aligned (saves a pass over it). */
  write(offset: number, data: Buffer, apply: () => Promise<void>, clusterCrcs?: Uint32Array): Promise<void>;
  trim(offset: number, length: number, apply: () => Promise<void>): Promise<void>;
}
