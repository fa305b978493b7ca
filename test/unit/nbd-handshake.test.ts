import { describe, expect, it } from 'vitest';
import { ByteQueue } from '../../edge/byte-queue.ts';
import {
  encodeClientFlags,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoRequest,
  encodeInfoString,
  encodeOption,
  encodeOptionReply,
  encodeServerEntry,
  parseClientFlags,
  parseExportNameReply,
  parseGreeting,
  parseInfoReply,
  parseInfoRequest,
  parseServerEntry,
  takeOption,
  takeOptionReply,
} from '../../edge/nbd-handshake.ts';
import {
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_NAME,
  NBD_OPT_GO,
  NBD_OPT_LIST,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
} from '../../edge/nbd-protocol.ts';
import { isKeelError } from '../../shared/errors.ts';

function queueOf(...chunks: Buffer[]): ByteQueue {
  const queue = new ByteQueue();
  for (const chunk of chunks) queue.push(chunk);
  return queue;
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    if (isKeelError(err)) return err.code;
    throw err;
  }
  return undefined;
}

describe('NBD handshake codec', () => {
  it('encodes the greeting with both magics as the spec spells them', () => {
    const greeting = encodeGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
    expect(greeting.length).toBe(18);
    expect(greeting.toString('latin1', 0, 16)).toBe('NBDMAGICIHAVEOPT');
    expect(greeting.readUInt16BE(16)).toBe(3);
    expect(parseGreeting(greeting)).toBe(3);
  });

  it('rejects a greeting that is not newstyle NBD', () => {
    const oldstyle = Buffer.alloc(18);
    oldstyle.write('NBDMAGIC', 0, 'latin1');
    oldstyle.writeUInt32BE(0x00420281, 8);
    expect(codeOf(() => parseGreeting(oldstyle))).toBe('PROTOCOL');
    expect(codeOf(() => parseGreeting(Buffer.alloc(18)))).toBe('PROTOCOL');
  });

  it('parses client flags and refuses unknown ones or NO_ZEROES when not offered', () => {
    const offered = NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES;
    expect(parseClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES, offered)).toEqual({ fixedNewstyle: true, noZeroes: true });
    expect(parseClientFlags(0, offered)).toEqual({ fixedNewstyle: false, noZeroes: false });
    expect(codeOf(() => parseClientFlags(1 << 2, offered))).toBe('PROTOCOL');
    expect(codeOf(() => parseClientFlags(NBD_FLAG_C_NO_ZEROES, NBD_FLAG_FIXED_NEWSTYLE))).toBe('PROTOCOL');
    expect(encodeClientFlags(3).readUInt32BE(0)).toBe(3);
  });

  it('takes options whole, whatever the chunking', () => {
    const bytes = Buffer.concat([encodeOption(NBD_OPT_GO, encodeInfoRequest('vol', [NBD_INFO_BLOCK_SIZE])), encodeOption(NBD_OPT_LIST)]);
    for (let split = 0; split <= bytes.length; split++) {
      const queue = queueOf(bytes.subarray(0, split));
      const first = takeOption(queue, 4096);
      if (split < 16 + 4 + 3 + 2 + 2) {
        expect(first).toBeNull();
        queue.push(bytes.subarray(split));
      } else queue.push(bytes.subarray(split));
      const go = first ?? takeOption(queue, 4096)!;
      expect(go.option).toBe(NBD_OPT_GO);
      expect(parseInfoRequest(go.data)).toEqual({ exportName: 'vol', infoTypes: [NBD_INFO_BLOCK_SIZE] });
      expect(takeOption(queue, 4096)).toEqual({ option: NBD_OPT_LIST, data: Buffer.alloc(0) });
      expect(queue.length).toBe(0);
    }
  });

  it('refuses an option with a bad magic or more data than allowed', () => {
    const bad = encodeOption(NBD_OPT_LIST);
    bad[0] ^= 0xff;
    expect(codeOf(() => takeOption(queueOf(bad), 4096))).toBe('PROTOCOL');
    const big = encodeOption(NBD_OPT_GO, Buffer.alloc(5000));
    expect(codeOf(() => takeOption(queueOf(big.subarray(0, 16)), 4096))).toBe('REQUEST_TOO_LARGE');
  });

  it('parses INFO/GO requests and refuses malformed ones', () => {
    expect(parseInfoRequest(encodeInfoRequest('', []))).toEqual({ exportName: '', infoTypes: [] });
    expect(parseInfoRequest(encodeInfoRequest('ünïcode', [3, 1]))).toEqual({ exportName: 'ünïcode', infoTypes: [3, 1] });
    expect(codeOf(() => parseInfoRequest(Buffer.alloc(5)))).toBe('PROTOCOL');
    const nameTooLong = encodeInfoRequest('vol', []);
    nameTooLong.writeUInt32BE(100, 0);
    expect(codeOf(() => parseInfoRequest(nameTooLong))).toBe('PROTOCOL');
    const countWrong = encodeInfoRequest('vol', [1]);
    countWrong.writeUInt16BE(2, 7);
    expect(codeOf(() => parseInfoRequest(countWrong))).toBe('PROTOCOL');
    const withNul = encodeInfoRequest('a\0b', []);
    expect(codeOf(() => parseInfoRequest(withNul))).toBe('PROTOCOL');
  });

  it('round-trips option replies and NBD_REP_INFO payloads', () => {
    const reply = encodeOptionReply(NBD_OPT_GO, NBD_REP_INFO, encodeInfoExport(2 ** 40 + 512, 0x14d));
    const taken = takeOptionReply(queueOf(reply.subarray(0, 7), reply.subarray(7)), 4096)!;
    expect(taken.option).toBe(NBD_OPT_GO);
    expect(taken.replyType).toBe(NBD_REP_INFO);
    expect(parseInfoReply(taken.data)).toEqual({ type: 'export', sizeBytes: 2 ** 40 + 512, transmissionFlags: 0x14d });
    expect(parseInfoReply(encodeInfoBlockSize({ minimumBytes: 512, preferredBytes: 4096, maximumBytes: 32 << 20 }))).toEqual({
      type: 'block_size',
      minimumBytes: 512,
      preferredBytes: 4096,
      maximumBytes: 32 << 20,
    });
    expect(parseInfoReply(encodeInfoString(NBD_INFO_NAME, 'vol'))).toEqual({ type: 'name', name: 'vol' });
    const error = encodeOptionReply(8, NBD_REP_ERR_UNSUP);
    expect(error.readUInt32BE(12)).toBe(2 ** 31 + 1);
    expect(error.length).toBe(20);
    expect(error.toString('hex', 0, 8)).toBe('0003e889045565a9');
  });

  it('encodes list entries and the NBD_OPT_EXPORT_NAME answer with and without zeroes', () => {
    expect(parseServerEntry(encodeServerEntry('vol', 'a volume'))).toEqual({ name: 'vol', description: 'a volume' });
    expect(parseServerEntry(encodeServerEntry('vol'))).toEqual({ name: 'vol', description: '' });
    const withZeroes = encodeExportNameReply(1 << 30, 0x10d, false);
    expect(withZeroes.length).toBe(134);
    expect(withZeroes.subarray(10).every((b) => b === 0)).toBe(true);
    const noZeroes = encodeExportNameReply(1 << 30, 0x10d, true);
    expect(noZeroes.length).toBe(10);
    expect(parseExportNameReply(noZeroes)).toEqual({ sizeBytes: 1 << 30, transmissionFlags: 0x10d });
  });
});
