/**
 * Names of a volume's objects in the backend (docs/backend-volumes.md). Every name is built here, so the
 * owner epoch can later join the name (fencing, high-availability issue) in one place. The volume's stable
 * id (VolumeRecord.id, a UUID) is used rather than its name, so a re-created name never meets old objects.
 *
 *   vol/<volumeId>/sco/<seq 8 digits>    a closed SCO file, byte for byte (data, crc table, trailer)
 *   vol/<volumeId>/tlog/<seq 8 digits>   a closed TLog file, byte for byte
 */
export type VolumeObjectKind = 'sco' | 'tlog';

const seqDigits = 8;

export function volumeObjectPrefix(volumeId: string): string {
  return `vol/${volumeId}/`;
}

export function volumeObjectKindPrefix(volumeId: string, kind: VolumeObjectKind): string {
  return `${volumeObjectPrefix(volumeId)}${kind}/`;
}

export function volumeObjectName(volumeId: string, kind: VolumeObjectKind, seq: number): string {
  return `${volumeObjectKindPrefix(volumeId, kind)}${String(seq).padStart(seqDigits, '0')}`;
}

/** The kind and seq of an object name of this volume, or undefined for anything else. */
export function parseVolumeObjectName(volumeId: string, name: string): { kind: VolumeObjectKind; seq: number } | undefined {
  const prefix = volumeObjectPrefix(volumeId);
  if (!name.startsWith(prefix)) return undefined;
  const match = /^(sco|tlog)\/(\d+)$/.exec(name.slice(prefix.length));
  if (match === null) return undefined;
  return { kind: match[1] as VolumeObjectKind, seq: Number(match[2]) };
}
