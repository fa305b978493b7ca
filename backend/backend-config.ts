/**
 * The vPool's `backend` section (stored in coordination, VpoolConfig.backend): which ASDs hold fragments
 * and with which preset. Parsed and validated here, with clear BAD_CONFIG errors, and turned into an
 * ErasureObjectStore by routers and by the `keel backend` commands. Reference: docs/backend-volumes.md.
 *
 * {
 *   "asds": [ { "type": "directory", "id": "asd-1", "path": "/data/asds/asd-1" },
 *             { "type": "s3", "id": "asd-2", "endpoint": "http://127.0.0.1:9000", "bucket": "b",
 *               "prefix": "asd-2/", "forcePathStyle": true, "region": "us-east-1",
 *               "accessKeyId": "...", "secretAccessKey": "..." } ],   // keys: else AWS_* env
 *   "preset": { "k": 4, "m": 2, ... }                                   // backend/preset.ts
 * }
 */
import path from 'node:path';
import type { VpoolConfig } from '../shared/coordination.ts';
import { KeelError } from '../shared/errors.ts';
import { clusterSizeBytes, limits } from '../shared/limits.ts';
import type { Logger } from '../shared/logger.ts';
import type { Asd } from './asd.ts';
import { DirectoryAsd } from './asd-directory.ts';
import { S3Asd, type S3AsdConfig } from './asd-s3.ts';
import { ErasureObjectStore } from './object-store.ts';
import { parsePreset, checkPreset, type Preset } from './preset.ts';

export type AsdConfig =
  | { type: 'directory'; id: string; path: string }
  | {
      type: 's3';
      id: string;
      bucket: string;
      prefix: string;
      endpoint?: string;
      region?: string;
      forcePathStyle: boolean;
      accessKeyId?: string;
      secretAccessKey?: string;
    };

export interface BackendConfig {
  asds: AsdConfig[];
  preset: Preset;
  /** The preset as configured (JSON), for display. */
  presetConfig: Record<string, unknown>;
}

/** The vPool's data-path settings a router needs besides the backend. */
export interface VpoolDataSettings {
  writeBufferBytesMax: number;
  readCacheBytesMax: number;
}

export const defaultAsdCount = 6;
const asdIdPattern = /^[A-Za-z0-9._-]{1,64}$/;

function bad(message: string, details?: Record<string, unknown>): KeelError {
  return KeelError.badConfig(`vPool backend: ${message}`, details);
}

function stringField(raw: Record<string, unknown>, name: string, where: string, optional = false): string | undefined {
  const value = raw[name];
  if (value === undefined && optional) return undefined;
  if (typeof value !== 'string' || value.length === 0) throw bad(`${where}: '${name}' must be a non-empty string`);
  return value;
}

function parseAsd(input: unknown, index: number): AsdConfig {
  const where = `asds[${index}]`;
  if (typeof input !== 'object' || input === null || Array.isArray(input)) throw bad(`${where} must be an object`);
  const raw = input as Record<string, unknown>;
  const id = stringField(raw, 'id', where, true) ?? `asd-${index + 1}`;
  if (!asdIdPattern.test(id)) throw bad(`${where}: id '${id}' must be 1-64 of [A-Za-z0-9._-]`);
  if (raw.type === 'directory') {
    const known = new Set(['type', 'id', 'path']);
    for (const key of Object.keys(raw)) if (!known.has(key)) throw bad(`${where}: unknown field '${key}'`);
    const dir = stringField(raw, 'path', where)!;
    if (!path.isAbsolute(dir)) throw bad(`${where}: path '${dir}' must be absolute (every router resolves it alike)`);
    return { type: 'directory', id, path: dir };
  }
  if (raw.type === 's3') {
    const known = new Set(['type', 'id', 'bucket', 'prefix', 'endpoint', 'region', 'forcePathStyle', 'accessKeyId', 'secretAccessKey']);
    for (const key of Object.keys(raw)) if (!known.has(key)) throw bad(`${where}: unknown field '${key}'`);
    const prefix = stringField(raw, 'prefix', where, true) ?? '';
    if (prefix !== '' && !prefix.endsWith('/')) throw bad(`${where}: prefix '${prefix}' must end with '/'`);
    const endpoint = stringField(raw, 'endpoint', where, true);
    if (endpoint !== undefined && !/^https?:\/\/[^/]+\/?$/.test(endpoint)) throw bad(`${where}: endpoint '${endpoint}' must be http(s)://host[:port]`);
    if (raw.forcePathStyle !== undefined && typeof raw.forcePathStyle !== 'boolean') throw bad(`${where}: forcePathStyle must be a boolean`);
    const accessKeyId = stringField(raw, 'accessKeyId', where, true);
    const secretAccessKey = stringField(raw, 'secretAccessKey', where, true);
    if ((accessKeyId === undefined) !== (secretAccessKey === undefined)) throw bad(`${where}: give both accessKeyId and secretAccessKey, or neither (env)`);
    return {
      type: 's3',
      id,
      bucket: stringField(raw, 'bucket', where)!,
      prefix,
      forcePathStyle: (raw.forcePathStyle as boolean | undefined) ?? true,
      ...(endpoint !== undefined ? { endpoint: endpoint.replace(/\/$/, '') } : {}),
      ...(raw.region !== undefined ? { region: stringField(raw, 'region', where)! } : {}),
      ...(accessKeyId !== undefined ? { accessKeyId, secretAccessKey } : {}),
    };
  }
  throw bad(`${where}: type must be 'directory' or 's3', got ${JSON.stringify(raw.type)}`);
}

/** Validates a backend section. Throws BAD_CONFIG with the offending field. */
export function parseBackendConfig(input: unknown, env: NodeJS.ProcessEnv = process.env): BackendConfig {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) throw bad('must be an object with asds and preset');
  const raw = input as Record<string, unknown>;
  for (const key of Object.keys(raw)) if (key !== 'asds' && key !== 'preset') throw bad(`unknown field '${key}'`);
  if (!Array.isArray(raw.asds) || raw.asds.length === 0) throw bad('asds must be a non-empty list');
  const asds = raw.asds.map(parseAsd);
  const ids = asds.map((a) => a.id);
  if (new Set(ids).size !== ids.length) throw bad('ASD ids must be distinct', { ids });
  const presetConfig = (raw.preset ?? {}) as Record<string, unknown>;
  const preset = parsePreset(presetConfig, env);
  checkPreset(preset, asds.length);
  return { asds, preset, presetConfig };
}

/** writeBufferBytesMax / readCacheBytesMax of the vPool (checked against each volume's SCO size when it opens). */
export function parseVpoolDataSettings(vpool: VpoolConfig | undefined): VpoolDataSettings {
  const writeBufferBytesMax = vpool?.writeBufferBytesMax ?? limits.writeBufferBytesDefault;
  const readCacheBytesMax = (vpool?.readCacheBytesMax as number | undefined) ?? limits.readCacheBytesDefault;
  if (!Number.isSafeInteger(writeBufferBytesMax) || writeBufferBytesMax <= 0) throw KeelError.badConfig(`vPool: writeBufferBytesMax must be a positive integer`);
  if (!Number.isSafeInteger(readCacheBytesMax) || readCacheBytesMax < 0) throw KeelError.badConfig(`vPool: readCacheBytesMax must be a non-negative integer`);
  return { writeBufferBytesMax, readCacheBytesMax };
}

/**
 * A SCO is evictable only once the TLog that closed it is uploaded, and a TLog closes after tlogScosMax
 * SCOs: a buffer smaller than that (+ the open SCO + one in upload) could never free space.
 */
export function checkWriteBufferHoldsTlog(writeBufferBytesMax: number, scoSizeBytes: number): void {
  const neededBytes = (limits.tlogScosMax + 2) * scoSizeBytes;
  if (writeBufferBytesMax < neededBytes)
    throw KeelError.badConfig(
      `vPool: writeBufferBytesMax ${writeBufferBytesMax} must hold at least tlogScosMax + 2 = ${limits.tlogScosMax + 2} SCOs of ${scoSizeBytes} bytes (${neededBytes})`,
    );
  if (scoSizeBytes % clusterSizeBytes !== 0) throw KeelError.badConfig('SCO size must be whole clusters');
}

export function createAsd(config: AsdConfig, env: NodeJS.ProcessEnv = process.env): Asd {
  if (config.type === 'directory') return new DirectoryAsd(config.id, config.path);
  const s3: S3AsdConfig = {
    id: config.id,
    bucket: config.bucket,
    prefix: config.prefix,
    forcePathStyle: config.forcePathStyle,
    ...(config.endpoint !== undefined ? { endpoint: config.endpoint } : {}),
    ...(config.region !== undefined ? { region: config.region } : {}),
    ...(config.accessKeyId !== undefined ? { accessKeyId: config.accessKeyId, secretAccessKey: config.secretAccessKey } : {}),
  };
  return new S3Asd(s3, env);
}

export interface VpoolBackend {
  config: BackendConfig;
  asds: Asd[];
  store: ErasureObjectStore;
}

/** The object store of a vPool (and its ASDs, for listing); BAD_CONFIG when the vPool has no valid backend. */
export function openVpoolBackend(vpool: VpoolConfig | undefined, logger?: Logger, env: NodeJS.ProcessEnv = process.env): VpoolBackend {
  if (!vpool?.backend) throw KeelError.badConfig('the vPool has no backend configured (run `keel up` once, or set it with --config)');
  const config = parseBackendConfig(vpool.backend, env);
  const asds = config.asds.map((a) => createAsd(a, env));
  const store = new ErasureObjectStore({ asds, preset: config.preset, ...(logger ? { logger } : {}) });
  return { config, asds, store };
}

/** The embedded default: 6 local-directory ASDs under DATA/asds/asd-1..6, preset 4+2. */
export function defaultDirectoryBackend(dataDir: string): Record<string, unknown> {
  return {
    asds: Array.from({ length: defaultAsdCount }, (_, i) => ({ type: 'directory', id: `asd-${i + 1}`, path: path.join(path.resolve(dataDir), 'asds', `asd-${i + 1}`) })),
    preset: { k: 4, m: 2 },
  };
}

/**
 * S3 ASDs from bucket URLs (http://host:port/bucket[/prefix/], path-style). One URL: 6 ASDs as prefixes
 * asd-1/..asd-6/ in that bucket. Several URLs: one ASD each. Credentials: given, else the routers' env.
 */
export function s3Backend(urls: string[], credentials?: { accessKeyId: string; secretAccessKey: string }): Record<string, unknown> {
  const parsed = urls.map((text) => {
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw KeelError.badArgument(`--s3: '${text}' is not a URL like http://127.0.0.1:9000/bucket`);
    }
    const parts = url.pathname.split('/').filter((p) => p !== '');
    if ((url.protocol !== 'http:' && url.protocol !== 'https:') || parts.length === 0)
      throw KeelError.badArgument(`--s3: '${text}' must be http(s)://host[:port]/bucket[/prefix]`);
    return { endpoint: `${url.protocol}//${url.host}`, bucket: parts[0]!, prefix: parts.slice(1).map((p) => `${p}/`).join('') };
  });
  const asds =
    parsed.length === 1
      ? Array.from({ length: defaultAsdCount }, (_, i) => ({ ...parsed[0]!, prefix: `${parsed[0]!.prefix}asd-${i + 1}/` }))
      : parsed;
  return {
    asds: asds.map((a, i) => ({ type: 's3', id: `asd-${i + 1}`, forcePathStyle: true, ...a, ...(credentials ?? {}) })),
    preset: { k: 4, m: 2 },
  };
}

/** The backend section without secrets, for display. */
export function describeBackend(config: BackendConfig): Record<string, unknown> {
  return {
    preset: config.presetConfig,
    asds: config.asds.map((a) =>
      a.type === 'directory' ? { id: a.id, type: a.type, path: a.path } : { id: a.id, type: a.type, endpoint: a.endpoint, bucket: a.bucket, prefix: a.prefix },
    ),
  };
}
