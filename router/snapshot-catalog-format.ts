/**
 * snapshots.jsonl, a volume's snapshot catalog (docs/snapshots.md, "Catalog"): an append-only journal of
 * JSON lines, folded in order at load. Pure codec; the I/O is snapshot-catalog.ts. One line per change
 * keeps a snapshot O(1) however many snapshots the volume has (a snapshot every 10 ms must not rewrite a
 * growing file).
 */
import { KeelError } from '../shared/errors.ts';

export const snapshotCatalogFileName = 'snapshots.jsonl';
export const snapshotCatalogFormat = 'keel-snapshots';
export const snapshotCatalogVersion = 1;

export interface SnapshotInfo {
  id: number;
  name: string;
  createdAtMs: number;
  /** Volume size when the snapshot was taken: the size of the `VOL@SNAP` export. */
  sizeBytes: number;
  labels: Record<string, string>;
}

/** A clone made from one of this volume's snapshots (the clone's own side is clone.json). */
export interface CloneRef {
  clone: string;
  snapshotId: number;
}

export type CatalogEvent =
  | { e: 'header'; format: string; version: number }
  | { e: 'create'; id: number; name: string; createdAtMs: number; sizeBytes: number; labels?: Record<string, string> }
  | { e: 'delete'; id: number }
  | { e: 'label'; id: number; labels: Record<string, string> }
  | { e: 'template'; value: boolean }
  | { e: 'clone'; clone: string; snapshotId: number }
  | { e: 'uncloned'; clone: string }
  | { e: 'nextId'; value: number };

export interface CatalogState {
  template: boolean;
  /** The next snapshot id (ids are never reused, so a TLog's SNAPSHOT record names one snapshot). */
  nextId: number;
  /** In creation order (ids grow). */
  snapshots: Map<number, SnapshotInfo>;
  /**
   * Name -> ids of the snapshots with that name, in creation order: name lookups are O(1) (a scan of
   * `snapshots` per create made a volume with 30 000 snapshots slow to snapshot). Normally one id; a
   * snapshot rebuilt from the TLogs as `snap-<id>` may share its name with one named so by a user.
   */
  idsByName: Map<string, number[]>;
  clones: CloneRef[];
}

export function emptyCatalog(): CatalogState {
  return { template: false, nextId: 1, snapshots: new Map(), idsByName: new Map(), clones: [] };
}

/** The snapshot named `name` (the first created, if several are), or undefined. */
export function snapshotNamed(state: CatalogState, name: string): SnapshotInfo | undefined {
  const ids = state.idsByName.get(name);
  return ids === undefined ? undefined : state.snapshots.get(ids[0]!);
}

function unindexName(state: CatalogState, name: string, id: number): void {
  const ids = state.idsByName.get(name);
  if (ids === undefined) return;
  const remaining = ids.filter((other) => other !== id);
  if (remaining.length > 0) state.idsByName.set(name, remaining);
  else state.idsByName.delete(name);
}

export function encodeCatalogEvent(event: CatalogEvent): string {
  return JSON.stringify(event) + '\n';
}

/** Applies one event (events are validated by decodeCatalog before they get here). */
export function applyCatalogEvent(state: CatalogState, event: CatalogEvent): void {
  switch (event.e) {
    case 'header':
      return;
    case 'create': {
      const replaced = state.snapshots.get(event.id);
      if (replaced !== undefined) unindexName(state, replaced.name, event.id);
      state.snapshots.set(event.id, { id: event.id, name: event.name, createdAtMs: event.createdAtMs, sizeBytes: event.sizeBytes, labels: event.labels ?? {} });
      const ids = state.idsByName.get(event.name);
      if (ids === undefined) state.idsByName.set(event.name, [event.id]);
      else ids.push(event.id);
      state.nextId = Math.max(state.nextId, event.id + 1);
      return;
    }
    case 'delete': {
      const info = state.snapshots.get(event.id);
      if (info === undefined) return;
      state.snapshots.delete(event.id);
      unindexName(state, info.name, event.id);
      return;
    }
    case 'label': {
      const info = state.snapshots.get(event.id);
      if (info) info.labels = event.labels;
      return;
    }
    case 'template':
      state.template = event.value;
      return;
    case 'clone':
      state.clones.push({ clone: event.clone, snapshotId: event.snapshotId });
      return;
    case 'uncloned':
      state.clones = state.clones.filter((c) => c.clone !== event.clone);
      return;
    case 'nextId':
      state.nextId = Math.max(state.nextId, event.value);
      return;
  }
}

/**
 * Folds a journal. A torn last line (no newline, or not JSON: a crash during an append) is ignored and
 * reported as `tornTail`; any other bad line is CORRUPT.
 */
export function decodeCatalog(text: string, where: string): { state: CatalogState; lines: number; tornTail: boolean } {
  const state = emptyCatalog();
  const lines = text.split('\n');
  const complete = lines.slice(0, -1); // the part after the last '\n' is a torn append or ''
  let tornTail = lines[lines.length - 1] !== '';
  complete.forEach((line, index) => {
    let event: CatalogEvent;
    try {
      event = JSON.parse(line) as CatalogEvent;
    } catch {
      if (index === complete.length - 1) {
        tornTail = true;
        return;
      }
      throw KeelError.corrupt(`${where} line ${index + 1}: not JSON`, { path: where, line: index + 1 });
    }
    if (index === 0 && (event.e !== 'header' || event.format !== snapshotCatalogFormat || event.version !== snapshotCatalogVersion)) {
      throw KeelError.corrupt(`${where}: not a version ${snapshotCatalogVersion} snapshot catalog`, { path: where });
    }
    if (!isCatalogEvent(event)) throw KeelError.corrupt(`${where} line ${index + 1}: bad event`, { path: where, line: index + 1 });
    applyCatalogEvent(state, event);
  });
  return { state, lines: complete.length, tornTail };
}

function isCatalogEvent(value: CatalogEvent): boolean {
  const id = (v: unknown) => Number.isSafeInteger(v) && (v as number) > 0;
  switch (value?.e) {
    case 'header':
      return true;
    case 'create':
      return id(value.id) && typeof value.name === 'string' && Number.isSafeInteger(value.createdAtMs) && Number.isSafeInteger(value.sizeBytes);
    case 'delete':
      return id(value.id);
    case 'label':
      return id(value.id) && typeof value.labels === 'object' && value.labels !== null;
    case 'template':
      return typeof value.value === 'boolean';
    case 'clone':
      return typeof value.clone === 'string' && id(value.snapshotId);
    case 'uncloned':
      return typeof value.clone === 'string';
    case 'nextId':
      return id(value.value);
    default:
      return false;
  }
}

/** The events that recreate `state` (compaction rewrites the journal with them). */
export function catalogEvents(state: CatalogState): CatalogEvent[] {
  const events: CatalogEvent[] = [{ e: 'header', format: snapshotCatalogFormat, version: snapshotCatalogVersion }];
  events.push({ e: 'nextId', value: state.nextId });
  if (state.template) events.push({ e: 'template', value: true });
  for (const info of state.snapshots.values()) events.push({ e: 'create', ...info });
  for (const ref of state.clones) events.push({ e: 'clone', ...ref });
  return events;
}

/** The compacted journal of `state`: what compaction writes, and what the backend copy carries. */
export function encodeCatalogJournal(state: CatalogState): string {
  return [...catalogJournalSlices(state, Infinity)].join('');
}

/**
 * encodeCatalogJournal in pieces of at most `eventsPerSlice` lines, for callers that yield to the event
 * loop between pieces (a 30 000-snapshot journal is ~3 MB: encoded in one go it held the router's event
 * loop for tens of milliseconds). The state is captured when the first piece is taken (the list of
 * snapshots, not their contents): a change meanwhile is in the next encoding.
 */
export function* catalogJournalSlices(state: CatalogState, eventsPerSlice: number): Generator<string> {
  const head: CatalogEvent[] = [{ e: 'header', format: snapshotCatalogFormat, version: snapshotCatalogVersion }, { e: 'nextId', value: state.nextId }];
  if (state.template) head.push({ e: 'template', value: true });
  const infos = [...state.snapshots.values()];
  const clones = state.clones.map((ref): CatalogEvent => ({ e: 'clone', ...ref }));
  let slice = head.map(encodeCatalogEvent).join('');
  let lines = head.length;
  for (const info of infos) {
    if (lines >= eventsPerSlice) {
      yield slice;
      slice = '';
      lines = 0;
    }
    slice += encodeCatalogEvent({ e: 'create', ...info });
    lines += 1;
  }
  for (const event of clones) {
    if (lines >= eventsPerSlice) {
      yield slice;
      slice = '';
      lines = 0;
    }
    slice += encodeCatalogEvent(event);
    lines += 1;
  }
  yield slice;
}

/**
 * The backend copy of a volume's catalog (router/catalog-mirror.ts, docs/snapshots.md "Catalog in the
 * backend"): JSON { format, version, catalog: the compacted journal, clone?: the text of clone.json }.
 */
export const catalogMirrorFormat = 'keel-catalog-mirror';
export const catalogMirrorVersion = 1;

export interface CatalogMirrorContent {
  /** snapshots.jsonl as compaction writes it. */
  catalog: string;
  /** clone.json's text, for a clone. */
  clone?: string;
}

export function encodeCatalogMirror(content: CatalogMirrorContent): Buffer {
  return Buffer.from(JSON.stringify({ format: catalogMirrorFormat, version: catalogMirrorVersion, ...content }));
}

/**
 * encodeCatalogMirror({ catalog: the slices joined, clone }), byte for byte, a slice at a time with
 * `pause` awaited between slices (the backend copy is put from the router's event loop). JSON escapes
 * character by character, so escaping the slices one by one gives the escape of the whole.
 */
export async function encodeCatalogMirrorSlices(catalogSlices: Iterable<string>, clone: string | undefined, pause: () => Promise<unknown>): Promise<Buffer[]> {
  const parts = [Buffer.from(`{"format":${JSON.stringify(catalogMirrorFormat)},"version":${catalogMirrorVersion},"catalog":"`)];
  for (const slice of catalogSlices) {
    parts.push(Buffer.from(JSON.stringify(slice).slice(1, -1)));
    await pause();
  }
  parts.push(Buffer.from(clone === undefined ? '"}' : `","clone":${JSON.stringify(clone)}}`));
  return parts;
}

export function decodeCatalogMirror(bytes: Buffer, where: string): CatalogMirrorContent {
  let parsed: Record<string, unknown>;
  try {
    parsed = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw KeelError.corrupt(`${where}: not JSON`);
  }
  const { format, version, catalog, clone } = parsed;
  if (format !== catalogMirrorFormat || version !== catalogMirrorVersion || typeof catalog !== 'string' || (clone !== undefined && typeof clone !== 'string')) {
    throw KeelError.corrupt(`${where}: not a catalog copy of version ${catalogMirrorVersion}`, { format, version });
  }
  decodeCatalog(catalog, where); // throws on a bad journal: never seed a volume with one
  return clone === undefined ? { catalog } : { catalog, clone };
}
