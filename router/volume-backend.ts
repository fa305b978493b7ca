/**
 * What a router's volumes need from the backend (docs/backend-volumes.md): the erasure-coded object store
 * (an interface, so tests can hold or fail individual puts), the ASDs (to list objects: restore, delete),
 * the router's write buffer and read cache. One RouterBackend per router; each volume adds its id.
 */
import type { Asd } from '../backend/asd.ts';
import type { PutObjectOptions, PutObjectResult, ReadRangeOptions } from '../backend/object-store.ts';
import type { ReadCache } from './read-cache.ts';
import type { WriteBuffer } from './write-buffer.ts';

export interface BackendObjectStore {
  /** Resolves with the store's PutObjectResult (test doubles may resolve with nothing: no abandoned writes). */
  putObject(name: string, data: Buffer | readonly Buffer[], options?: PutObjectOptions): Promise<PutObjectResult | void>;
  /** Bytes that pass options.verify when it is given (ReadRangeOptions): callers rely on that. */
  readRange(name: string, offset: number, length: number, options?: ReadRangeOptions): Promise<Buffer>;
  statObject(name: string): Promise<{ sizeBytes: number }>;
  deleteObject(name: string): Promise<void>;
  /** Forgets cached object metadata under a prefix (ErasureObjectStore.forgetPrefix); absent in test doubles. */
  forgetPrefix?(prefix: string): void;
}

export interface RouterBackend {
  store: BackendObjectStore;
  asds: readonly Asd[];
  writeBuffer: WriteBuffer;
  readCache: ReadCache;
}

export interface VolumeBackend extends RouterBackend {
  /** VolumeRecord.id: names the volume's objects (router/backend-object-names.ts). */
  volumeId: string;
  /** The owner epoch this router holds the volume at: in TLog object names and fencing markers (docs/high-availability.md). */
  ownerEpoch?: number;
}
