/**
 * What a failed fragment read says about the fragment, for the object store's last-resort retries
 * (docs/backend-format.md, "Partial reads", step 3). A stripe short of k good units retries only the
 * fragments whose failure may not happen again:
 *
 * - `passing`: the request failed (reset connection, refused, 5xx): retried with the bounded backoff.
 * - `short-body`: the ASD answered with fewer bytes than the fragment holds there (a truncated response, a
 *   flaky proxy): the stored fragment is whole, so it is retried like a passing failure.
 * - `bad-block`: bytes that fail their block crc. Usually the stored bytes are bad, but a response
 *   corrupted in transit looks the same: re-read at most `backendBadBlockRereadsMax` times.
 * - `final`: missing fragment, bad header or tables, timeout (it already cost a full deadline): not retried.
 */
import { isKeelError, KeelError } from '../shared/errors.ts';

export type ReadFailureKind = 'passing' | 'short-body' | 'bad-block' | 'final';

/** Marks a CORRUPT error as a short body (readBodyRange throws it), so it can be told from bad tables. */
export function shortBodyError(what: string, gotBytes: number, expectedBytes: number, details: Record<string, unknown> = {}): KeelError {
  return KeelError.corrupt(`${what}: short read of ${gotBytes} of ${expectedBytes} bytes`, { ...details, shortBody: true, gotBytes, expectedBytes });
}

export function readFailureKind(err: unknown): ReadFailureKind {
  if (isKeelError(err, 'IO') || isKeelError(err, 'CONNECTION_CLOSED')) return 'passing';
  if (isKeelError(err, 'CORRUPT') && err.details['shortBody'] === true) return 'short-body';
  if (isKeelError(err, 'CHECKSUM_MISMATCH')) return 'bad-block';
  return 'final';
}

/** Worth a last-resort retry at all (a `bad-block` one only within its own bound). */
export function isRetryableReadFailure(err: unknown): boolean {
  return readFailureKind(err) !== 'final';
}
