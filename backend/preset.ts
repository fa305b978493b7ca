/**
 * Backend preset: how an object is protected and stored (DESIGN: k data + m parity fragments, chunk size,
 * checksum, compression, encryption). `k = 1` is replication: every fragment is a full copy.
 * Layout consequences of each field: docs/backend-format.md.
 */
import { KeelError } from '../shared/errors.ts';

export type CompressionMode = 'none' | 'lz4';
export type EncryptionMode = 'none' | 'aes-256-gcm';

export interface Preset {
  /** Data fragments. */
  readonly k: number;
  /** Parity fragments: a read survives the loss or corruption of any m fragments. */
  readonly m: number;
  /** Unit of compression/encryption and of a partial read of a transformed object (plain bytes). */
  readonly chunkSizeBytes: number;
  /** Bytes of one fragment in one Reed-Solomon stripe: the unit of a degraded (decoding) read. */
  readonly stripeUnitBytes: number;
  readonly checksum: 'crc32c';
  readonly compression: CompressionMode;
  readonly encryption: EncryptionMode;
  /** 32-byte AES key; present exactly when encryption is on. */
  readonly encryptionKey?: Buffer;
}

/** Bounds of the Reed-Solomon library (@ronomon/reed-solomon: MAX_K 24, MAX_M 6). */
export const presetKMax = 24;
export const presetMMax = 6;
export const chunkSizeBytesMin = 4096;
export const chunkSizeBytesMax = 1024 * 1024;
export const stripeUnitBytesMin = 4096;
export const stripeUnitBytesMax = 1024 * 1024;

export const defaultPreset = {
  k: 4,
  m: 2,
  chunkSizeBytes: 64 * 1024,
  stripeUnitBytes: 64 * 1024,
  checksum: 'crc32c',
  compression: 'none',
  encryption: 'none',
} as const satisfies Preset;

export const encryptionKeyEnv = 'KEEL_BACKEND_KEY';

function bad(message: string, details?: Record<string, unknown>): KeelError {
  return KeelError.badConfig(`backend preset: ${message}`, details);
}

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

function intField(raw: Record<string, unknown>, name: string, fallback: number): number {
  const value = raw[name] ?? fallback;
  if (typeof value !== 'number' || !Number.isInteger(value)) throw bad(`${name} must be an integer`, { [name]: value });
  return value;
}

function enumField<T extends string>(raw: Record<string, unknown>, name: string, allowed: readonly T[], fallback: T): T {
  const value = raw[name] ?? fallback;
  if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value))
    throw bad(`${name} must be one of ${allowed.join(', ')}`, { [name]: value });
  return value as T;
}

function parseKey(hex: unknown, source: string): Buffer {
  if (typeof hex !== 'string' || !/^[0-9a-fA-F]{64}$/.test(hex))
    throw bad(`the aes-256-gcm key from ${source} must be 64 hex digits (32 bytes)`);
  return Buffer.from(hex, 'hex');
}

/**
 * Builds a Preset from config (JSON-like). Missing fields take `defaultPreset`. The encryption key comes
 * from `encryptionKeyHex` in the config or else from the environment variable KEEL_BACKEND_KEY.
 */
export function parsePreset(input: unknown, env: NodeJS.ProcessEnv = process.env): Preset {
  if (input === undefined) input = {};
  if (typeof input !== 'object' || input === null || Array.isArray(input)) throw bad('must be an object');
  const raw = input as Record<string, unknown>;
  const known = new Set(['k', 'm', 'chunkSizeBytes', 'stripeUnitBytes', 'checksum', 'compression', 'encryption', 'encryptionKeyHex']);
  for (const key of Object.keys(raw)) if (!known.has(key)) throw bad(`unknown field '${key}'`);
  const encryption = enumField<EncryptionMode>(raw, 'encryption', ['none', 'aes-256-gcm'], defaultPreset.encryption);
  let encryptionKey: Buffer | undefined;
  if (encryption === 'aes-256-gcm') {
    if (raw.encryptionKeyHex !== undefined) encryptionKey = parseKey(raw.encryptionKeyHex, 'encryptionKeyHex');
    else if (env[encryptionKeyEnv] !== undefined) encryptionKey = parseKey(env[encryptionKeyEnv], encryptionKeyEnv);
    else throw bad(`encryption aes-256-gcm needs a key: set encryptionKeyHex or ${encryptionKeyEnv}`);
  } else if (raw.encryptionKeyHex !== undefined) {
    throw bad('encryptionKeyHex is set but encryption is none');
  }
  const preset: Preset = {
    k: intField(raw, 'k', defaultPreset.k),
    m: intField(raw, 'm', defaultPreset.m),
    chunkSizeBytes: intField(raw, 'chunkSizeBytes', defaultPreset.chunkSizeBytes),
    stripeUnitBytes: intField(raw, 'stripeUnitBytes', defaultPreset.stripeUnitBytes),
    checksum: enumField(raw, 'checksum', ['crc32c'] as const, 'crc32c'),
    compression: enumField<CompressionMode>(raw, 'compression', ['none', 'lz4'], defaultPreset.compression),
    encryption,
    ...(encryptionKey ? { encryptionKey } : {}),
  };
  checkPreset(preset);
  return preset;
}

/** Throws BAD_CONFIG when the preset is inconsistent, or cannot be placed on `asdCount` distinct ASDs. */
export function checkPreset(preset: Preset, asdCount?: number): void {
  const { k, m } = preset;
  if (!Number.isInteger(k) || k < 1 || k > presetKMax) throw bad(`k must be an integer in [1, ${presetKMax}]`, { k });
  if (!Number.isInteger(m) || m < 0 || m > presetMMax) throw bad(`m must be an integer in [0, ${presetMMax}]`, { m });
  if (!isPowerOfTwo(preset.chunkSizeBytes) || preset.chunkSizeBytes < chunkSizeBytesMin || preset.chunkSizeBytes > chunkSizeBytesMax)
    throw bad(`chunkSizeBytes must be a power of two in [${chunkSizeBytesMin}, ${chunkSizeBytesMax}]`, {
      chunkSizeBytes: preset.chunkSizeBytes,
    });
  if (!isPowerOfTwo(preset.stripeUnitBytes) || preset.stripeUnitBytes < stripeUnitBytesMin || preset.stripeUnitBytes > stripeUnitBytesMax)
    throw bad(`stripeUnitBytes must be a power of two in [${stripeUnitBytesMin}, ${stripeUnitBytesMax}]`, {
      stripeUnitBytes: preset.stripeUnitBytes,
    });
  if (preset.checksum !== 'crc32c') throw bad('checksum must be crc32c');
  if (preset.encryption === 'aes-256-gcm' && preset.encryptionKey?.length !== 32)
    throw bad('encryption aes-256-gcm needs a 32-byte key');
  if (asdCount !== undefined && k + m > asdCount)
    throw bad(`k+m = ${k + m} fragments need as many distinct ASDs, but only ${asdCount} are configured`, { k, m, asdCount });
}

/** True when chunks are transformed (compressed and/or encrypted) before erasure coding. */
export function presetTransformsChunks(preset: Pick<Preset, 'compression' | 'encryption'>): boolean {
  return preset.compression !== 'none' || preset.encryption !== 'none';
}

/** Preset as shown in logs and APIs: never the key. */
export function describePreset(preset: Preset): string {
  return `${preset.k}+${preset.m} chunk ${preset.chunkSizeBytes} stripe unit ${preset.stripeUnitBytes} ${preset.compression} ${preset.encryption}`;
}
