/**
 * The Redis key layout of coordination (docs/coordination.md): key names, the layout version, how router
 * and volume records map to hash fields and back, and the Lua scripts that change them atomically.
 * Pure: no I/O. The client that runs these is shared/coordination-redis.ts.
 *
 * Records are hashes of strings, not JSON blobs, because Redis's Lua cjson prints numbers with 14
 * significant digits: a 2^50-byte volume size re-encoded inside a script would silently lose its low
 * digits. The scripts only ever touch single string fields; numbers are formatted and parsed here.
 */
import { KeelError } from './errors.ts';
import { dtlModes, type DtlMode, type RouterRecord, type RouterState, type VolumeDtlState, type VolumeRecord, type VpoolConfig } from './coordination.ts';

/** Bumped when the layout changes incompatibly; stored under `<prefix>format`. */
export const redisLayoutVersion = 1;

/** Default prefix of every key. Redis Cluster needs a hash tag in it (e.g. `{keel}:`): see the doc. */
export const defaultKeyPrefix = 'keel:';

export interface RedisKeys {
  /** String: the layout version. */
  format: string;
  /** Set of router ids: listRouters reads it instead of scanning keys. */
  routers: string;
  /** Set of volume names. */
  volumes: string;
  /** Sorted set of deleted volumes' ids, scored by deletion time; the newest volumeTombstonesMax are kept. */
  deletedVolumes: string;
  /** String: the vPool configuration as JSON (never touched by a script). */
  vpool: string;
  router(id: string): string;
  volume(name: string): string;
}

export function redisKeys(prefix: string): RedisKeys {
  return {
    format: `${prefix}format`,
    routers: `${prefix}routers`,
    volumes: `${prefix}volumes`,
    deletedVolumes: `${prefix}deleted-volumes`,
    vpool: `${prefix}vpool`,
    router: (id) => `${prefix}router:${id}`,
    volume: (name) => `${prefix}volume:${name}`,
  };
}

/** Lua scripts, registered with ioredis defineCommand (EVALSHA, reloaded by ioredis after NOSCRIPT). */
export interface RedisScript {
  name: string;
  numberOfKeys: number;
  lua: string;
}

export const redisScripts = {
  /** KEYS: router hash, router set. ARGV: id, field, value, ... Replaces the record (stale fields go). */
  replaceRouter: {
    name: 'keelReplaceRouter',
    numberOfKeys: 2,
    lua: `
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SADD', KEYS[2], ARGV[1])
return 1`,
  },
  /** KEYS: record hash. ARGV: field, value. Returns 0 when the record does not exist (nothing written). */
  setFieldIfExists: {
    name: 'keelSetFieldIfExists',
    numberOfKeys: 1,
    lua: `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1`,
  },
  /** KEYS: volume hash, volume set. ARGV: name, field, value, ... Returns 0 when the name is taken. */
  createVolume: {
    name: 'keelCreateVolume',
    numberOfKeys: 2,
    lua: `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SADD', KEYS[2], ARGV[1])
return 1`,
  },
  /** KEYS: volume hash. ARGV: sizeBytes. Returns the new record's fields, or nil when it does not exist. */
  resizeVolume: {
    name: 'keelResizeVolume',
    numberOfKeys: 1,
    lua: `
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HSET', KEYS[1], 'sizeBytes', ARGV[1])
return redis.call('HGETALL', KEYS[1])`,
  },
  /**
   * KEYS: volume hash, volume set, tombstone sorted set. ARGV: name, now (ms), tombstones kept. Returns 0
   * when it did not exist. The tombstone (the volume's id) is what lets its owner destroy the data.
   */
  deleteVolume: {
    name: 'keelDeleteVolume',
    numberOfKeys: 3,
    lua: `
local id = redis.call('HGET', KEYS[1], 'id')
if not id then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], id)
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[3]) + 1))
return 1`,
  },
  /**
   * KEYS: volume hash. ARGV: owner, expected epoch. The compare-and-set of ownership: returns nil when the
   * volume does not exist, an empty array when its epoch is not the expected one, else the new record.
   */
  claimVolume: {
    name: 'keelClaimVolume',
    numberOfKeys: 1,
    lua: `
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local epoch = redis.call('HGET', KEYS[1], 'ownerEpoch')
if tonumber(epoch) ~= tonumber(ARGV[2]) then return {} end
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'ownerEpoch', 1)
return redis.call('HGETALL', KEYS[1])`,
  },
  /**
   * KEYS: volume hash. ARGV: expected epoch, field, value, ... Sets the fields only while the epoch is the
   * expected one (a fenced owner cannot overwrite its successor's DTL state): nil when the volume does not
   * exist, 0 when the epoch moved, 1 when written.
   */
  setVolumeFieldsAtEpoch: {
    name: 'keelSetVolumeFieldsAtEpoch',
    numberOfKeys: 1,
    lua: `
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if tonumber(redis.call('HGET', KEYS[1], 'ownerEpoch')) ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1`,
  },
} as const satisfies Record<string, RedisScript>;

const routerStates: readonly RouterState[] = ['up', 'draining', 'down'];

/** Flat field/value list for HSET. */
export function routerFields(record: RouterRecord): string[] {
  const fields = [
    'id', record.id,
    'address', record.address,
    'pid', String(record.pid),
    'startedAtMs', String(record.startedAtMs),
    'heartbeatAtMs', String(record.heartbeatAtMs),
    'state', record.state,
  ]; // prettier-ignore
  if (record.mgmtAddress !== undefined) fields.push('mgmtAddress', record.mgmtAddress);
  return fields;
}

export function volumeFields(record: VolumeRecord): string[] {
  return [
    'id', record.id,
    'name', record.name,
    'sizeBytes', String(record.sizeBytes),
    'scoSizeBytes', String(record.scoSizeBytes),
    'owner', record.owner,
    'ownerEpoch', String(record.ownerEpoch),
    'createdAtMs', String(record.createdAtMs),
    ...volumeDtlFields(record),
    ...(record.cloneOf !== undefined ? ['cloneOf', record.cloneOf] : []),
  ]; // prettier-ignore
}

/** The DTL fields that are set, as a flat HSET list (booleans as '1'/'0'). */
export function volumeDtlFields(state: VolumeDtlState): string[] {
  const fields: string[] = [];
  if (state.dtlMode !== undefined) fields.push('dtlMode', state.dtlMode);
  if (state.dtlPeer !== undefined) fields.push('dtlPeer', state.dtlPeer);
  if (state.dtlInSync !== undefined) fields.push('dtlInSync', state.dtlInSync ? '1' : '0');
  if (state.dtlStream !== undefined) fields.push('dtlStream', state.dtlStream);
  if (state.ownerFailedEpoch !== undefined) fields.push('ownerFailedEpoch', String(state.ownerFailedEpoch));
  return fields;
}

/** A Lua HGETALL reply (field, value, field, value, ...) as an object, like ioredis's own hgetall. */
export function fieldsFromFlat(flat: readonly string[]): Record<string, string> {
  const fields: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!;
  return fields;
}

/** Reads one hash; every malformed field is a CORRUPT error naming the key, never a crash. */
class FieldReader {
  constructor(
    private readonly key: string,
    private readonly fields: Record<string, string>,
  ) {}

  string(field: string): string {
    const value = this.fields[field];
    if (value === undefined) throw this.corrupt(field, 'missing');
    return value;
  }

  optionalString(field: string): string | undefined {
    return this.fields[field];
  }

  number(field: string): number {
    const text = this.string(field);
    const value = Number(text);
    if (text.trim() === '' || !Number.isFinite(value)) throw this.corrupt(field, `not a number: '${text}'`);
    return value;
  }

  integer(field: string): number {
    const value = this.number(field);
    if (!Number.isSafeInteger(value) || value < 0) throw this.corrupt(field, `not a non-negative integer: ${value}`);
    return value;
  }

  private corrupt(field: string, reason: string): KeelError {
    return KeelError.corrupt(`coordination record ${this.key}`, { field, reason });
  }
}

export function decodeRouter(key: string, fields: Record<string, string>): RouterRecord {
  const reader = new FieldReader(key, fields);
  const state = reader.string('state') as RouterState;
  if (!routerStates.includes(state)) throw KeelError.corrupt(`coordination record ${key}`, { field: 'state', reason: state });
  const record: RouterRecord = {
    id: reader.string('id'),
    address: reader.string('address'),
    pid: reader.integer('pid'),
    startedAtMs: reader.number('startedAtMs'),
    heartbeatAtMs: reader.number('heartbeatAtMs'),
    state,
  };
  const mgmtAddress = reader.optionalString('mgmtAddress');
  if (mgmtAddress !== undefined) record.mgmtAddress = mgmtAddress;
  return record;
}

export function decodeVolume(key: string, fields: Record<string, string>): VolumeRecord {
  const reader = new FieldReader(key, fields);
  const record: VolumeRecord = {
    id: reader.string('id'),
    name: reader.string('name'),
    sizeBytes: reader.integer('sizeBytes'),
    scoSizeBytes: reader.integer('scoSizeBytes'),
    owner: reader.string('owner'),
    ownerEpoch: reader.integer('ownerEpoch'),
    createdAtMs: reader.number('createdAtMs'),
  };
  const dtlMode = reader.optionalString('dtlMode');
  if (dtlMode !== undefined) {
    if (!dtlModes.includes(dtlMode as DtlMode)) throw KeelError.corrupt(`coordination record ${key}`, { field: 'dtlMode', reason: dtlMode });
    record.dtlMode = dtlMode as DtlMode;
  }
  const dtlPeer = reader.optionalString('dtlPeer');
  if (dtlPeer !== undefined) record.dtlPeer = dtlPeer;
  const dtlInSync = reader.optionalString('dtlInSync');
  if (dtlInSync !== undefined) {
    if (dtlInSync !== '0' && dtlInSync !== '1') throw KeelError.corrupt(`coordination record ${key}`, { field: 'dtlInSync', reason: dtlInSync });
    record.dtlInSync = dtlInSync === '1';
  }
  const dtlStream = reader.optionalString('dtlStream');
  if (dtlStream !== undefined) record.dtlStream = dtlStream;
  if (fields.ownerFailedEpoch !== undefined) record.ownerFailedEpoch = reader.integer('ownerFailedEpoch');
  const cloneOf = reader.optionalString('cloneOf');
  if (cloneOf !== undefined) record.cloneOf = cloneOf;
  return record;
}

export function decodeVpool(key: string, text: string): VpoolConfig {
  let config: unknown;
  try {
    config = JSON.parse(text);
  } catch (err) {
    throw KeelError.corrupt(`coordination record ${key}`, { reason: String(err) });
  }
  const candidate = config as Partial<VpoolConfig> | null;
  if (typeof candidate !== 'object' || candidate === null || Array.isArray(candidate) || typeof candidate.name !== 'string') {
    throw KeelError.corrupt(`coordination record ${key}`, { reason: 'not a vPool object with a name' });
  }
  return candidate as VpoolConfig;
}
