/**
 * The block operations a volume offers, by byte offset. The edge serves a BlockTarget over NBD; the
 * router's volume driver implements it; the edge's remote volume implements it over the wire.
 * Offsets and lengths are bytes and need not be cluster-aligned. Errors are KeelErrors
 * (OUT_OF_RANGE, IO, CHECKSUM_MISMATCH, NO_OWNER, ...).
 */
export interface BlockTarget {
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  read(offset: number, length: number): Promise<Buffer>;
  /** Optional: reads target.length bytes at offset into the caller's buffer (every byte is written). */
  readInto?(target: Buffer, offset: number): Promise<void>;
  /** readInto within this turn when the data is at hand: true once target is filled, false to use readInto. */
  readIntoInline?(target: Buffer, offset: number): boolean;
  /** With fua, resolves only once this write (and all acknowledged before it) is durable. */
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  /** Makes every write acknowledged before this call durable. */
  flush(): Promise<void>;
  /** Unmaps whole clusters in the range; partial clusters at its edges are zeroed. Reads give zeros. */
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  /** Like trim, but zeroing is guaranteed for every byte of the range. */
  writeZeroes(offset: number, length: number, fua: boolean): Promise<void>;
}

/** A BlockTarget the caller opened and must close. */
export interface OpenBlockTarget extends BlockTarget {
  close(): Promise<void>;
}

/** How the edge finds what to serve for an NBD export name. */
export interface ExportResolver {
  /** Throws KeelError VOLUME_NOT_FOUND for an unknown export. */
  open(exportName: string): Promise<OpenBlockTarget>;
  /** Size and flags without opening a session (NBD_OPT_INFO). */
  describe(exportName: string): Promise<{ sizeBytes: number; readOnly: boolean }>;
  list(): Promise<Array<{ name: string; description?: string }>>;
}
