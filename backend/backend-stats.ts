/**
 * Per-ASD counters kept by the object store (exported to /metrics and the dashboard by the router).
 * A checksum error is counted against the ASD that served the bad bytes (DESIGN invariant 6).
 */
export interface AsdCounters {
  asdId: string;
  requests: number;
  bytesRead: number;
  bytesWritten: number;
  readErrors: number;
  writeErrors: number;
  timeouts: number;
  /** Fragments asked for that did not exist. */
  notFound: number;
  checksumErrors: number;
  /** Fragments rewritten by repairObject. */
  fragmentsRepaired: number;
}

export function emptyAsdCounters(asdId: string): AsdCounters {
  return {
    asdId,
    requests: 0,
    bytesRead: 0,
    bytesWritten: 0,
    readErrors: 0,
    writeErrors: 0,
    timeouts: 0,
    notFound: 0,
    checksumErrors: 0,
    fragmentsRepaired: 0,
  };
}

export interface ObjectStoreCounters {
  objectsPut: number;
  rangeReads: number;
  /** Range reads that needed at least one Reed-Solomon decode (or a second replica). */
  degradedReads: number;
  stripesDecoded: number;
  /** Stripe decodes that were short of k fragments and retried ones that had failed in passing. */
  readRetries: number;
  /** Fragment re-reads in those retries because the fragment had served a short body or bytes failing their block crc. */
  badBodyRereads: number;
  /** Stripe decodes from another k-subset of fragments after a decode failed the caller's check (silently bad fragments). */
  subsetDecodes: number;
  headerCacheHits: number;
  headerCacheMisses: number;
}

export function emptyObjectStoreCounters(): ObjectStoreCounters {
  return { objectsPut: 0, rangeReads: 0, degradedReads: 0, stripesDecoded: 0, readRetries: 0, badBodyRereads: 0, subsetDecodes: 0, headerCacheHits: 0, headerCacheMisses: 0 };
}
