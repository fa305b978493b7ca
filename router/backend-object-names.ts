/**
 * Names of a volume's objects in the backend (docs/backend-volumes.md, fencing in
 * docs/high-availability.md). Every name is built here. The volume's stable id (VolumeRecord.id, a UUID)
 * is used rather than its name, so a re-created name never meets old objects.
 *
 *   vol/<volumeId>/sco/<seq 8 digits>                 a closed SCO file, byte for byte
 *   vol/<volumeId>/tlog/<seq 8 digits>-<epoch 8 digits> a closed TLog file, byte for byte, put by the owner at that epoch
 *   vol/<volumeId>/tlog/<seq 8 digits>                (before owner epochs were in names: read as epoch 0)
 *   vol/<volumeId>/epoch/<epoch 8 digits>              fencing marker of a new owner: JSON { "tlogsRestored": n }
 *   vol/<volumeId>/catalog/<ms 13 digits>-<epoch 8 digits>  the snapshot catalog and clone origin, put by the owner at that epoch (catalog-mirror.ts)
 *
 * The epoch in TLog names keeps an old owner's late upload from replacing a newer owner's TLog of the
 * same number; the marker tells restore which TLogs of older epochs to ignore (those above n).
 */
export type VolumeObjectKind = 'sco' | 'tlog' | 'epoch' | 'catalog';

const seqDigits = 8;

export function volumeObjectPrefix(volumeId: string): string {
  return `vol/${volumeId}/`;
}

export function volumeObjectKindPrefix(volumeId: string, kind: VolumeObjectKind): string {
  return `${volumeObjectPrefix(volumeId)}${kind}/`;
}

/** `ownerEpoch` is part of TLog and catalog names only (SCO numbers never collide: docs/high-availability.md). */
export function volumeObjectName(volumeId: string, kind: VolumeObjectKind, seq: number, ownerEpoch?: number): string {
  const base = `${volumeObjectKindPrefix(volumeId, kind)}${String(seq).padStart(seqDigits, '0')}`;
  return (kind === 'tlog' || kind === 'catalog') && ownerEpoch !== undefined ? `${base}-${String(ownerEpoch).padStart(seqDigits, '0')}` : base;
}

/** The kind, seq (the epoch for markers) and epoch of an object name of this volume, or undefined for anything else. */
export function parseVolumeObjectName(volumeId: string, name: string): { kind: VolumeObjectKind; seq: number; epoch: number } | undefined {
  const prefix = volumeObjectPrefix(volumeId);
  if (!name.startsWith(prefix)) return undefined;
  const match = /^(sco|tlog|epoch|catalog)\/(\d+)(?:-(\d+))?$/.exec(name.slice(prefix.length));
  if (match === null || (match[3] !== undefined && match[1] !== 'tlog' && match[1] !== 'catalog')) return undefined;
  const seq = Number(match[2]);
  return { kind: match[1] as VolumeObjectKind, seq, epoch: match[1] === 'epoch' ? seq : Number(match[3] ?? 0) };
}
