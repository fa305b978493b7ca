/**
 * Operating errors: one class, a `code` union, named constructors (after hypercore-errors).
 * Callers branch on `code`. Programmer errors are `assert`s and are never caught.
 */

export type KeelErrorCode =
  | 'BAD_ARGUMENT' // a CLI argument, config value or API parameter is malformed
  | 'BAD_CONFIG' // limits or config contradict each other
  | 'VOLUME_EXISTS'
  | 'VOLUME_NOT_FOUND'
  | 'ROUTER_NOT_FOUND'
  | 'OUT_OF_RANGE' // an I/O request outside the device
  | 'REQUEST_TOO_LARGE'
  | 'PROTOCOL' // a malformed frame or message from a peer
  | 'VERSION_MISMATCH'
  | 'CHECKSUM_MISMATCH'
  | 'CORRUPT' // an on-disk structure failed validation
  | 'IO' // a disk or network operation failed
  | 'NO_SPACE' // a disk is full (ENOSPC, EDQUOT): writes fail until space returns; nothing else is lost
  | 'TIMEOUT'
  | 'CONNECTION_CLOSED'
  | 'NOT_OWNER' // this router does not own the volume (see `owner` in details)
  | 'NO_OWNER' // no router could be reached for the volume within the deadline
  | 'READ_ONLY'
  | 'CLOSED' // the object was closed while the operation was pending
  | 'BUSY'
  | 'OBJECT_NOT_FOUND' // a backend object or fragment does not exist
  | 'SNAPSHOT_NOT_FOUND'
  | 'SNAPSHOT_EXISTS'
  | 'HAS_DEPENDENTS' // a snapshot or volume that clones depend on
  | 'DIVERGED' // the target of an incremental import changed since the stream's base snapshot
  | 'FENCED' // a newer owner epoch exists: the sender is an old owner and must stop
  | 'TAKEOVER_REFUSED' // taking the volume over would lose acknowledged writes (docs/high-availability.md)
  | 'PINNED' // the volume may not change router: a clone and its parent share one (docs/snapshots.md, "Clones")
  | 'ALREADY_RUNNING'; // another live process holds the data directory (or router directory) this one needs

export class KeelError extends Error {
  readonly code: KeelErrorCode;
  readonly details: Record<string, unknown>;

  constructor(code: KeelErrorCode, message: string, details: Record<string, unknown> = {}, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'KeelError';
    this.code = code;
    this.details = details;
  }

  static badArgument(message: string, details?: Record<string, unknown>) {
    return new KeelError('BAD_ARGUMENT', message, details);
  }
  static badConfig(message: string, details?: Record<string, unknown>) {
    return new KeelError('BAD_CONFIG', message, details);
  }
  static volumeExists(name: string) {
    return new KeelError('VOLUME_EXISTS', `volume '${name}' already exists`, { volume: name });
  }
  static volumeNotFound(name: string) {
    return new KeelError('VOLUME_NOT_FOUND', `volume '${name}' does not exist`, { volume: name });
  }
  static routerNotFound(id: string) {
    return new KeelError('ROUTER_NOT_FOUND', `router '${id}' is not registered`, { router: id });
  }
  static outOfRange(offset: number, length: number, sizeBytes: number) {
    return new KeelError('OUT_OF_RANGE', `request [${offset}, +${length}) is outside the device of ${sizeBytes} bytes`, {
      offset,
      length,
      sizeBytes,
    });
  }
  static requestTooLarge(length: number, maxBytes: number) {
    return new KeelError('REQUEST_TOO_LARGE', `request of ${length} bytes exceeds the maximum of ${maxBytes}`, {
      length,
      maxBytes,
    });
  }
  static protocol(message: string, details?: Record<string, unknown>) {
    return new KeelError('PROTOCOL', message, details);
  }
  static versionMismatch(ours: number, theirs: unknown) {
    return new KeelError('VERSION_MISMATCH', `peer speaks protocol version ${String(theirs)}, we speak ${ours}`, {
      ours,
      theirs,
    });
  }
  static checksumMismatch(what: string, details?: Record<string, unknown>) {
    return new KeelError('CHECKSUM_MISMATCH', `checksum mismatch in ${what}`, details);
  }
  static corrupt(what: string, details?: Record<string, unknown>) {
    return new KeelError('CORRUPT', `corrupt ${what}`, details);
  }
  static io(message: string, cause?: unknown, details?: Record<string, unknown>) {
    return new KeelError('IO', message, details, cause);
  }
  static noSpace(message: string, cause?: unknown, details?: Record<string, unknown>) {
    return new KeelError('NO_SPACE', message, details, cause);
  }
  static timeout(what: string, timeoutMs: number) {
    return new KeelError('TIMEOUT', `${what} timed out after ${timeoutMs} ms`, { timeoutMs });
  }
  static connectionClosed(peer: string) {
    return new KeelError('CONNECTION_CLOSED', `connection to ${peer} closed`, { peer });
  }
  static notOwner(volume: string, owner?: string) {
    return new KeelError('NOT_OWNER', `this router does not own volume '${volume}'`, { volume, owner });
  }
  static noOwner(volume: string, waitedMs: number) {
    const why = waitedMs > 0 ? `within ${waitedMs} ms` : '(no live router is registered for it)';
    return new KeelError('NO_OWNER', `no router serving volume '${volume}' could be reached ${why}`, {
      volume,
      waitedMs,
    });
  }
  static readOnly(what: string) {
    return new KeelError('READ_ONLY', `${what} is read-only`);
  }
  static closed(what: string) {
    return new KeelError('CLOSED', `${what} is closed`);
  }
  static objectNotFound(what: string, details?: Record<string, unknown>) {
    return new KeelError('OBJECT_NOT_FOUND', `${what} does not exist`, details);
  }
  static alreadyRunning(what: string, pid: number) {
    return new KeelError('ALREADY_RUNNING', `${what} already runs (pid ${pid}): stop it first, or use another --data directory`, { pid });
  }
  static busy(what: string) {
    return new KeelError('BUSY', `${what} is busy`);
  }
  static snapshotNotFound(volume: string, snapshot: string) {
    return new KeelError('SNAPSHOT_NOT_FOUND', `volume '${volume}' has no snapshot '${snapshot}'`, { volume, snapshot });
  }
  static snapshotExists(volume: string, snapshot: string) {
    return new KeelError('SNAPSHOT_EXISTS', `volume '${volume}' already has a snapshot '${snapshot}'`, { volume, snapshot });
  }
  static pinned(reason: string, routerId: string) {
    return new KeelError('PINNED', `${reason}: clones and their parents stay on router ${routerId} (docs/snapshots.md, "Clones")`, { router: routerId });
  }
  static hasDependents(what: string, dependents: string[]) {
    return new KeelError('HAS_DEPENDENTS', `${what} has dependent clones: ${dependents.join(', ')} (delete them first)`, { dependents });
  }
}

export function isKeelError(err: unknown, code?: KeelErrorCode): err is KeelError {
  return err instanceof KeelError && (code === undefined || err.code === code);
}

/** Turns a KeelError carried over the wire (code + message) back into a KeelError. */
export function keelErrorFromWire(wire: { code: string; message: string; details?: Record<string, unknown> }): KeelError {
  return new KeelError(wire.code as KeelErrorCode, wire.message, wire.details ?? {});
}
