/**
 * Per-chunk compression (lz4 block, size-prefixed) and encryption (AES-256-GCM) applied before erasure
 * coding. Each chunk is transformed on its own so a partial read fetches and undoes only the chunks it
 * needs. Stored chunk = [lz4 or raw bytes] when not encrypted, or nonce (12) | ciphertext | tag (16).
 * The GCM additional data binds a chunk to its object and position, so chunks cannot be swapped.
 * Layout: docs/backend-format.md#compression-and-encryption.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { compress, uncompress } from 'lz4-napi';
import { crc32c } from '../shared/checksum.ts';
import { KeelError } from '../shared/errors.ts';
import type { ChunkIndexEntry } from './fragment-format.ts';
import type { Preset } from './preset.ts';

export const gcmNonceBytes = 12;
export const gcmTagBytes = 16;

export interface StoredChunk {
  stored: Buffer;
  entry: ChunkIndexEntry;
}

export class ChunkTransform {
  constructor(
    private readonly preset: Pick<Preset, 'compression' | 'encryption' | 'encryptionKey'>,
    private readonly nameHash: Buffer,
  ) {}

  async encode(plain: Buffer, chunkIndex: number): Promise<StoredChunk> {
    let body = plain;
    let compressed = false;
    if (this.preset.compression === 'lz4') {
      const packed = await compress(plain);
      // Incompressible chunks are stored raw: never pay the decompression for nothing.
      if (packed.length < plain.length) {
        body = packed;
        compressed = true;
      }
    }
    const stored = this.preset.encryption === 'aes-256-gcm' ? this.encrypt(body, chunkIndex) : body;
    return { stored, entry: { storedLength: stored.length, compressed, plainCrc: crc32c(plain) } };
  }

  /** Undoes encode; throws CHECKSUM_MISMATCH when authentication, decompression or the plain crc fails. */
  async decode(stored: Buffer, chunkIndex: number, compressed: boolean, plainCrc: number, plainLength: number): Promise<Buffer> {
    const body = this.preset.encryption === 'aes-256-gcm' ? this.decrypt(stored, chunkIndex) : stored;
    let plain = body;
    if (compressed) {
      try {
        plain = await uncompress(body);
      } catch (err) {
        throw KeelError.checksumMismatch(`chunk ${chunkIndex} (lz4 data invalid)`, { chunk: chunkIndex, cause: String(err) });
      }
    }
    if (plain.length !== plainLength || crc32c(plain) !== plainCrc)
      throw KeelError.checksumMismatch(`chunk ${chunkIndex} (plain crc32c)`, { chunk: chunkIndex });
    return plain;
  }

  private additionalData(chunkIndex: number): Buffer {
    const aad = Buffer.alloc(this.nameHash.length + 4);
    this.nameHash.copy(aad);
    aad.writeUInt32LE(chunkIndex, this.nameHash.length);
    return aad;
  }

  private encrypt(body: Buffer, chunkIndex: number): Buffer {
    // A random nonce per chunk: rewriting an object under the same key never reuses one.
    const nonce = randomBytes(gcmNonceBytes);
    const cipher = createCipheriv('aes-256-gcm', this.preset.encryptionKey!, nonce);
    cipher.setAAD(this.additionalData(chunkIndex));
    const head = cipher.update(body);
    const tail = cipher.final();
    return Buffer.concat([nonce, head, tail, cipher.getAuthTag()]);
  }

  private decrypt(stored: Buffer, chunkIndex: number): Buffer {
    if (stored.length < gcmNonceBytes + gcmTagBytes) throw KeelError.checksumMismatch(`chunk ${chunkIndex} (too short)`);
    try {
      const decipher = createDecipheriv('aes-256-gcm', this.preset.encryptionKey!, stored.subarray(0, gcmNonceBytes));
      decipher.setAAD(this.additionalData(chunkIndex));
      decipher.setAuthTag(stored.subarray(stored.length - gcmTagBytes));
      return Buffer.concat([decipher.update(stored.subarray(gcmNonceBytes, stored.length - gcmTagBytes)), decipher.final()]);
    } catch {
      throw KeelError.checksumMismatch(`chunk ${chunkIndex} (AES-GCM authentication failed: corrupt, or a different key)`, {
        chunk: chunkIndex,
      });
    }
  }
}
