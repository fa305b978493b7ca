/**
 * NBD protocol constants: magics, flags, option/reply/info/command numbers and error values.
 * The format and every decision Keel takes about it are in docs/nbd-protocol.md; the numbers are those of
 * the NBD spec (NetworkBlockDevice/nbd, doc/proto.md, section "Values"). All fields are big-endian.
 */

/** Server greeting: 'NBDMAGIC' then 'IHAVEOPT', both 64-bit, written as two 32-bit halves. */
export const NBD_INIT_MAGIC_HI = 0x4e42444d; // 'NBDM'
export const NBD_INIT_MAGIC_LO = 0x41474943; // 'AGIC'
/** 'IHAVEOPT': in the greeting and at the start of every client option. */
export const NBD_OPTS_MAGIC_HI = 0x49484156; // 'IHAV'
export const NBD_OPTS_MAGIC_LO = 0x454f5054; // 'EOPT'
/** 0x3e889045565a9: the start of every fixed-newstyle option reply. */
export const NBD_REP_MAGIC_HI = 0x0003e889;
export const NBD_REP_MAGIC_LO = 0x045565a9;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Sizes of fixed parts on the wire, in bytes. */
export const NBD_GREETING_BYTES = 18; // 8 + 8 + 2
export const NBD_CLIENT_FLAGS_BYTES = 4;
export const NBD_OPTION_HEADER_BYTES = 16; // magic 8, option 4, length 4
export const NBD_OPTION_REPLY_HEADER_BYTES = 20; // magic 8, option 4, type 4, length 4
export const NBD_EXPORT_NAME_REPLY_BYTES = 10; // size 8, transmission flags 2
export const NBD_EXPORT_NAME_ZEROES_BYTES = 124;
export const NBD_REQUEST_HEADER_BYTES = 28; // magic 4, flags 2, type 2, handle 8, offset 8, length 4
export const NBD_SIMPLE_REPLY_HEADER_BYTES = 16; // magic 4, error 4, handle 8
/** Strings (export names, messages) MUST be no longer than this (spec "Conventions"). */
export const NBD_STRING_BYTES_MAX = 4096;

/** Handshake flags (16 bits, server -> client). */
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;

/** Client flags (32 bits, client -> server). */
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

/** Transmission flags (16 bits, sent with the export's size). */
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

/** Option types (client -> server during option haggling). */
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_PEEK_EXPORT = 4;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;

/** Option reply types; errors have bit 31 set. */
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
const NBD_REP_FLAG_ERROR = 2 ** 31;
export const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1;
export const NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR + 2;
export const NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR + 3;
export const NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR + 4;
export const NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5;
export const NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6;
export const NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR + 7;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR + 8;
export const NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR + 9;

export function isOptionReplyError(replyType: number): boolean {
  return replyType >= NBD_REP_FLAG_ERROR;
}

/** NBD_REP_INFO information types (NBD_OPT_INFO / NBD_OPT_GO). */
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;
/** Payload lengths of the fixed-size info replies, including the 2-byte type. */
export const NBD_INFO_EXPORT_BYTES = 12;
export const NBD_INFO_BLOCK_SIZE_BYTES = 14;

/** Command types (transmission phase). */
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

/** Command flags (16 bits per request). */
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

/** Error values in the reply's error field. */
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

/**
 * Keel's advertised block size constraints (docs/nbd-protocol.md, "Block sizes"). The maximum is
 * limits.nbdRequestBytesMax. The minimum is a hint: the server also accepts byte-granular requests.
 */
export const KEEL_BLOCK_SIZE_MINIMUM_BYTES = 512;
export const KEEL_BLOCK_SIZE_PREFERRED_BYTES = 4096;

export const commandNames: Record<number, string> = {
  [NBD_CMD_READ]: 'read',
  [NBD_CMD_WRITE]: 'write',
  [NBD_CMD_DISC]: 'disc',
  [NBD_CMD_FLUSH]: 'flush',
  [NBD_CMD_TRIM]: 'trim',
  [NBD_CMD_CACHE]: 'cache',
  [NBD_CMD_WRITE_ZEROES]: 'write_zeroes',
  [NBD_CMD_BLOCK_STATUS]: 'block_status',
};

export const optionNames: Record<number, string> = {
  [NBD_OPT_EXPORT_NAME]: 'export_name',
  [NBD_OPT_ABORT]: 'abort',
  [NBD_OPT_LIST]: 'list',
  [NBD_OPT_PEEK_EXPORT]: 'peek_export',
  [NBD_OPT_STARTTLS]: 'starttls',
  [NBD_OPT_INFO]: 'info',
  [NBD_OPT_GO]: 'go',
  [NBD_OPT_STRUCTURED_REPLY]: 'structured_reply',
  [NBD_OPT_LIST_META_CONTEXT]: 'list_meta_context',
  [NBD_OPT_SET_META_CONTEXT]: 'set_meta_context',
};
