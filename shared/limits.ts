/**
 * Every bound in Keel lives here: queues, windows, caches, retry loops, sizes (TIGER_STYLE).
 * Names end in `Max` (or `Min`) and carry their unit. `checkLimits` verifies how they relate and runs at
 * the start of every process, so a bad combination fails loudly before any I/O.
 */
import { KeelError } from './errors.ts';
import { framePreambleBytes } from './wire/wire-format.ts';

export const clusterSizeBytes = 4096;

export const limits = {
  /** NBD: the largest request payload the edge accepts (advertised as the maximum block size). */
  nbdRequestBytesMax: 32 * 1024 * 1024,
  /** NBD: option payloads during the handshake (export names, info requests). */
  nbdOptionBytesMax: 64 * 1024,
  /** NBD: requests read from one client connection and not yet answered. */
  nbdRequestsInFlightMax: 256,
  /** NBD: client connections served by one edge at once. */
  nbdConnectionsMax: 1024,
  /**
   * NBD: option replies queued for a client during the handshake before the edge stops reading its
   * options until the client reads (a client that sends options and never reads grew the edge by GBs).
   */
  nbdHandshakeReplyBytesMax: 1024 * 1024,
  /**
   * NBD: connections still in the handshake. A new connection beyond it closes the oldest of them (idle ones
   * first, then ones whose export is still opening): 1024 silent sockets took every nbdConnectionsMax slot
   * and locked all clients out for nbdHandshakeTimeoutMs. Established connections are never closed for it.
   */
  nbdHandshakingConnectionsMax: 128,
  /** NBD: how long a client may take to finish the handshake. */
  nbdHandshakeTimeoutMs: 30_000,
  /** NBD: payload bytes (write data + read data) of one connection's requests in flight before it stops reading. */
  nbdRequestBytesInFlightMax: 128 * 1024 * 1024,
  /**
   * NBD: payload bytes in flight of all connections of one edge together: WRITE data from the moment its
   * header is read (a partly received payload included) until the target is done with it, READ data until
   * its reply has left for the kernel (unread replies count). Without it nbdConnectionsMax connections could
   * each hold nbdRequestBytesInFlightMax and a few hundred busy or hostile clients OOM the edge. At the bound,
   * connections stop reading new requests until bytes are released.
   */
  nbdEdgeRequestBytesInFlightMax: 1024 * 1024 * 1024,
  /** NBD: on server stop, how long in-flight requests may take before their connection is cut. */
  nbdDrainTimeoutMs: 10_000,
  /** NBD: after the server's FIN (DISC, ABORT, stop), how long the client may keep its side open. */
  nbdCloseLingerMs: 2_000,
  /**
   * NBD: how long the payload of a request may take to arrive once its bytes are held in
   * nbdEdgeRequestBytesInFlightMax (from its header on) before the connection is cut. Nothing timed out a
   * stalled payload: 32 connections that each sent a 32 MiB WRITE header and one byte (1 KB of traffic) held
   * the whole budget and hung every other client of the edge until they left. 30 s lets a 32 MiB payload
   * through a 10 Mbit/s link.
   */
  nbdPayloadReceiveTimeoutMs: 30_000,
  /**
   * NBD: how long READ reply data holding bytes of nbdEdgeRequestBytesInFlightMax may wait with not one byte
   * of the connection's output taken by the client before the connection is cut: ten clients that sent
   * READs and never read the replies held the budget and hung every other client's writes. Progress is
   * counted in bytes leaving for the kernel (a large writev shows as it goes), so a client that reads
   * steadily is kept; the edge sees a byte taken only once the kernel's buffers have room (about half its
   * send buffer, at most 2 MiB with Linux defaults), so 30 s keeps clients reading 70 KB/s and up.
   */
  nbdReplyDrainTimeoutMs: 30_000,

  /**
   * Disk: a data read or write done inline (synchronous pread/pwrite on the event loop, see
   * shared/inline-io-gate.ts) that takes longer than this missed the page cache; inline I/O then pauses.
   */
  inlineIoSlowUsMax: 400,
  /**
   * Disk: larger writes always go through the thread pool. A 1 MiB page-cache write takes the event loop
   * 250+ us, against 8-14 us of pool overhead, and the loop routes other requests meanwhile (1M sequential
   * writes: the owner's event loop is their bottleneck). Reads stay inline: their reply waits for them.
   */
  inlineWriteBytesMax: 256 * 1024,
  /** Disk: the copy time an inline operation is allowed per byte on top of inlineIoSlowUsMax (1 ns: 1 GB/s). */
  inlineIoCopyNsPerByteMax: 1,
  /** Disk: this many slow inline operations in a row pause inline I/O (one alone may be a preemption). */
  inlineIoSlowStreakMax: 2,
  /** Disk: how long data I/O goes through the thread pool after a slow inline operation. */
  inlineIoPauseMs: 1_000,
  /**
   * Disk: bytes one write syscall takes at most (files and directory ASDs alike); larger writes are
   * split. Bigger writes made the kernel allocate large page-cache folios that cost 10x more to fill on
   * the reference VM (shared/write-slices.ts).
   */
  fileWriteBytesMax: 1024 * 1024,
  /** Directory ASDs: page-aligned staging buffers of fileWriteBytesMax for O_DIRECT puts, per process (backend/direct-write.ts). */
  directWriteStagingBuffersMax: 32,

  /** Router: read replies up to this size use buffers from a pool (shared/buffer-pool.ts); larger ones allocate. */
  replyBufferBytesMax: 256 * 1024,
  /** Router: free reply buffers kept for reuse, in bytes. */
  replyBufferPoolBytesMax: 32 * 1024 * 1024,
  /** Bytes of checksumming (or similar CPU work on data) done in one go on the event loop before it yields. */
  eventLoopSliceBytesMax: 256 * 1024,

  /** Wire: the largest frame (header + payload); a request of nbdRequestBytesMax must fit. */
  wireFrameBytesMax: 32 * 1024 * 1024 + 64 * 1024,
  /**
   * Wire: request frames joined from several socket chunks come from a pool in size classes of this many
   * bytes when at least one class long (shared/wire/frame-codec.ts GatherPool); smaller ones allocate.
   */
  wireGatherClassBytes: 64 * 1024,
  /** Wire: free joined-frame buffers one router keeps for reuse, in bytes. */
  wireGatherPoolBytesMax: 64 * 1024 * 1024,
  /** Wire: the largest msgpack header in a frame. */
  wireHeaderBytesMax: 16 * 1024,
  /**
   * Wire: the largest frame a router accepts from a connection that has not completed its hello (the
   * hello is 52-54 bytes; test/unit/rpc.test.ts checks that it fits). Before, a stranger's socket could
   * declare a wireFrameBytesMax frame and have the router buffer it: 1000 sockets, 32 GB.
   */
  wireHelloFrameBytesMax: 4 * 1024,
  /**
   * Wire: bytes of request frames one router holds at once, of all its connections together: a frame from
   * the moment its 8-byte preamble has arrived (a partly received frame counts in full) until its request
   * no longer needs the frame (docs/wire-protocol.md, "Flow control"). Without it every connection past its
   * hello could make the router buffer a wireFrameBytesMax frame plus wireServerRequestsInFlightMax requests,
   * and a few hundred clients sending (or trickling) large writes OOM it. A connection that cannot get the
   * bytes for its next frame stops reading and waits in line; one that holds them reads that frame to its end.
   */
  wireServerFrameBytesInFlightMax: 1024 * 1024 * 1024,
  /**
   * Wire: the part of wireServerFrameBytesInFlightMax kept for connections of role `router` (DTL streams),
   * which no other connection may take. An owner's writes wait for its DTL peer's acks while holding their
   * frames; with one budget, two routers full of writes each waiting for the other's DTL stream would wait
   * for each other forever.
   */
  wireServerPeerFrameBytesInFlightMax: 256 * 1024 * 1024,
  /**
   * Wire: how long a request frame that holds budget (wireServerFrameBytesInFlightMax) may take to arrive
   * before the router closes its connection (checked once per period: a frame is cut after one to two).
   * A client that sends part of a large frame and stalls, or trickles it, would pin the bytes for good,
   * and 32 such sockets starve everyone. The router reads a frame holding budget as fast as it comes, and a
   * client gives up on a request after wireRequestTimeoutMs, so a frame still arriving then is of no use.
   */
  wireFrameReceiveTimeoutMs: 10_000,
  /** Wire: requests one edge connection keeps in flight to a router (the window). */
  wireRequestsInFlightMax: 512,
  /** Wire: requests a router serves concurrently on one connection before it stops reading. */
  wireServerRequestsInFlightMax: 512,
  /**
   * Frames (wire frames or NBD replies) one socket batches into a writev before it sends them mid-turn
   * (shared/writev-batch.ts). 8 against unbounded, measured back to back at 4k QD32: randread 35.1k
   * against 31.0k IOPS, randwrite 17.6k against 15.7k (means of 7 alternating runs each); 4 costs more
   * syscalls than it saves waiting.
   */
  writevFramesMax: 8,
  /** Wire: bytes queued for sending on one connection before callers wait. */
  wireSendQueueBytesMax: 64 * 1024 * 1024,
  /** Wire: one request's deadline at the router before the edge retries it elsewhere. */
  wireRequestTimeoutMs: 10_000,
  /** Wire: how long the edge keeps looking for a volume's owner before failing requests with EIO. */
  ownerWaitMaxMs: 30_000,
  /** Wire: attempts to reconnect and resend within ownerWaitMaxMs. */
  reconnectAttemptsMax: 200,
  reconnectBackoffMaxMs: 500,
  /** Wire: requests a client holds beyond its in-flight window before new ones fail with BUSY. */
  wireRequestsQueuedMax: 16_384,
  /** Wire: how long a connect may take, and how long a server waits for a client's hello. */
  wireConnectTimeoutMs: 3_000,
  wireHandshakeTimeoutMs: 10_000,
  /** Wire: after a graceful close, how long the peer may keep the socket before it is destroyed. */
  wireCloseLingerMs: 1_000,
  /**
   * Wire: connections one router serves at once; beyond it a new connection is closed at once (one
   * rate-limited log line), where before a client could open thousands. What legitimately connects: an
   * edge per volume it exports (one per NBD connection, so up to volumesPerRouterMax and more with
   * multi-connection clients), a peer router per volume whose DTL stream this router holds (about as many
   * again), and short-lived `keel` commands and ownership probes. Four times volumesPerRouterMax leaves
   * room for all of that; the process needs as many file descriptors (ulimit -n).
   */
  wireConnectionsMax: 16_384,
  /** Wire: volume handles one connection may hold open at a router. */
  wireHandlesPerConnectionMax: 1_024,

  /** Volume driver: SCO size bounds (DESIGN: 4–128 MiB) and default. */
  scoSizeBytesMin: 4 * 1024 * 1024,
  scoSizeBytesMax: 128 * 1024 * 1024,
  scoSizeBytesDefault: 64 * 1024 * 1024,
  /** Volume driver: the open SCO is fsynced in the background after this many appended bytes (see OpenSco). */
  scoBackgroundSyncBytes: 4 * 1024 * 1024,
  /**
   * Volume driver: files of deleted SCOs kept per volume for reuse as new SCOs (router/sco-spares.ts), on
   * top of the write buffer's bound: at most this many SCOs of disk each.
   */
  scoSparesMax: 4,
  /** Volume driver: SCOs per TLog before it rolls over. */
  tlogScosMax: 4,
  /** Volume driver: records in one TLog before it rolls over anyway (trims and syncs add records without SCOs). */
  tlogRecordsMax: 1 << 20,
  /** Volume driver: bytes of a TLog read at once during recovery. */
  tlogReadChunkBytes: 1024 * 1024,
  /** Volume driver: clusters appended in one batched write. */
  appendBatchClustersMax: 8192,
  /** Volume driver: closed SCO checksum tables cached in RAM. */
  scoChecksumTablesCachedMax: 256,
  /** Volume driver: writes waiting for the open SCO before callers are held back. */
  volumeWritesQueuedMax: 4096,
  /** Volume size bounds. */
  volumeSizeBytesMax: 2 ** 50, // 1 PiB: LBAs stay exact in a double
  volumeNameLengthMax: 128,
  volumesPerRouterMax: 4096,
  /** Volumes a starting router opens (recovers) at once, in the background once it listens (router/volume-registry.ts). */
  volumesOpeningAtStartMax: 4,

  /** Backend: the largest object (a SCO or TLog) the erasure-coded store accepts; it is held in RAM while encoded. */
  backendObjectSizeBytesMax: 256 * 1024 * 1024,
  /** Backend: fragment requests (PUT/GET/DELETE) one object store keeps in flight across all ASDs. */
  backendFragmentRequestsInFlightMax: 24,
  /**
   * Backend: bytes one ranged read of a fragment may cover when it serves several stripe units of a range
   * (backend/fragment-format.ts fragmentRuns): fewer, larger requests, each held in RAM at once.
   */
  backendFragmentReadBytesMax: 4 * 1024 * 1024,
  /** Backend: deadline of one ASD request; the request is aborted after it. */
  backendRequestTimeoutMs: 10_000,
  /**
   * Backend: deadline of listing a prefix on one ASD, every page of it (each page is still one request
   * under backendRequestTimeoutMs): a volume's prefix grows by k+m keys per object, thousands per ASD for a
   * large volume, so one request's deadline must not bound the whole listing.
   */
  backendListTimeoutMs: 120_000,
  /** Backend: retries of a failed fragment PUT or DELETE after the first attempt, with exponential backoff. */
  backendRetriesMax: 4,
  backendRetryBackoffBaseMs: 50,
  backendRetryBackoffMaxMs: 2_000,
  /**
   * Backend: times a stripe short of k good units re-reads a fragment whose bytes failed their block crc
   * (backend/read-failure.ts): a response corrupted in transit reads right the next time, bad stored bytes
   * never do, so more re-reads only delay the EIO.
   */
  backendBadBlockRereadsMax: 1,
  /**
   * Backend: k-subsets of a stripe's fragments decoded, one after the other, when a decode fails the
   * caller's check (ErasureObjectStore.decodeAccepted). C(k+m-1, k) subsets exist without the piece's own
   * fragment: 5 at 4+2, 45 at 8+3; each decode costs k stripe units of codec work.
   */
  backendDecodeSubsetsMax: 64,
  /** Backend: objects whose fragment headers + checksum tables stay cached for partial reads, and their total size. */
  backendHeaderCacheEntriesMax: 4_096,
  backendHeaderCacheBytesMax: 64 * 1024 * 1024,
  /** Backend: Reed-Solomon stripe encodes/decodes running on the libuv threadpool at once. */
  backendCodecStripesInFlightMax: 4,
  /** Backend: parity of one object put is computed into a pooled buffer up to this size (object-store.ts); larger ones allocate. */
  backendParityBufferBytesMax: 64 * 1024 * 1024,
  /** Backend: free parity buffers kept for reuse per object store. */
  backendParityPoolBytesMax: 128 * 1024 * 1024,
  /** S3 ASDs: keep-alive sockets for GETs, per ASD, and how long one may idle before it is closed (asd-s3.ts). */
  s3GetSocketsMax: 32,
  s3IdleSocketMs: 4_000,
  /** S3 ASDs: presigned GET URLs cached per ASD, how long each is valid, and how long it is reused (backend/presigned-url-cache.ts). */
  s3PresignedUrlsMax: 8_192,
  s3PresignedUrlExpirySeconds: 900,
  s3PresignedUrlReuseMs: 300_000,
  /** S3 ASDs: bytes of an error answer read for its code and message. */
  s3ErrorBodyBytesMax: 4_096,
  /** Backend: keys one ASD list call returns (pages are followed up to this many). */
  backendListKeysMax: 100_000,

  /** Router backend: closed SCOs of one volume uploaded at once (each is k+m fragment PUTs). */
  scoUploadsInFlightMax: 2,
  /** Router backend: SCOs are read for upload into pooled buffers up to this size (sco-uploader.ts); larger ones allocate. */
  scoUploadBufferBytesMax: 128 * 1024 * 1024,
  /**
   * Upload and parity buffers are allocated in multiples of this (BufferPool.acquireFitting), and a free one
   * that fits serves any smaller SCO: a full 64 MiB SCO file (clusters + footer) takes 80 MiB.
   */
  uploadBufferClassBytes: 16 * 1024 * 1024,
  /** Router backend: free upload buffers kept for reuse, all volumes together. */
  scoUploadBufferPoolBytesMax: 256 * 1024 * 1024,
  /** Router backend: pause before a failed SCO/TLog upload is tried again (the store already retried it). */
  uploadRetryDelayMs: 1_000,
  /** Router backend: on a clean close, how long a volume waits for its uploads before leaving them for the next start. */
  uploadDrainOnCloseMs: 5_000,
  /** Router backend: after the drain, how long a closing volume waits for uploads still in flight (their data stays local). */
  uploadAbandonOnCloseMs: 1_000,
  /** Router backend: backend objects deleted at once when a deleted volume is dropped. */
  objectDeletesInFlightMax: 8,
  /** Write buffer: default bound of local bytes not yet evictable (open + not yet uploaded SCOs) per router. */
  writeBufferBytesDefault: 1024 * 1024 * 1024,
  /** Write buffer: ingest slows down above this fraction of writeBufferBytesMax (delay grows with the overshoot). */
  writeBufferSoftFraction: 0.75,
  /** Write buffer: the delay of one write at the hard limit's edge (it grows linearly from 0 at the soft threshold). */
  writeThrottleDelayMaxMs: 50,
  /** Write buffer: at most one throttle log line per this period. */
  throttleLogIntervalMs: 5_000,
  /** RAM cache: default bytes of cluster copies a router keeps in memory (router/cluster-ram-cache.ts; `--ram-cache`). */
  ramCacheBytesDefault: 256 * 1024 * 1024,
  /** RAM cache: memory is taken in slabs of this size as the cache fills. */
  ramCacheSlabBytes: 4 * 1024 * 1024,
  /** RAM cache: only reads of at most this many clusters look in it and fill it (small random reads; a scan would flush it). */
  ramCacheReadClustersMax: 4,
  /** Read cache: default size of the local cache of backend data per router, and its slot (block) size. */
  readCacheBytesDefault: 256 * 1024 * 1024,
  readCacheBlockBytes: 64 * 1024,
  /**
   * Remote reads: crc tables of evicted SCOs fetched from the backend and kept in RAM, per volume. A table
   * is 4 B per cluster, so this covers 16 GiB of the volume's data whatever its SCO size (256 tables of
   * 64 MiB SCOs, 4096 of 4 MiB ones).
   */
  remoteScoTableBytesMax: 16 * 1024 * 1024,
  /** Remote reads: a sequential read's fetch is widened to this many bytes within its SCO (router/remote-sco-reader.ts). */
  remoteReadAheadBytesMax: 4 * 1024 * 1024,
  /** Remote reads: the SCOs of a volume whose latest read's end is kept, to tell a sequential read. */
  remoteReadStreamsMax: 256,
  /** Remote reads: a one-cluster read starts a sequential stream only if the next read at its end comes within this many reads. */
  remoteReadRecentReadsMax: 16,
  /** Remote reads: a read starting at most this many clusters after where the SCO's latest read ended is still sequential. */
  remoteReadAheadGapClustersMax: 16,
  /** Restore from the backend: TLogs downloaded at once. */
  tlogDownloadsInFlightMax: 4,
  /** Management HTTP: a request must be answered within this. */
  mgmtRequestTimeoutMs: 5_000,
  /**
   * Coordination keeps the ids of this many deleted volumes: an owner destroys a volume's data only on
   * seeing its id there. The embedded document is rewritten at every heartbeat, so the list stays small;
   * an owner that was down for more deletions than this keeps the data of its deleted volumes (the safe side).
   */
  volumeTombstonesMax: 4096,
  /** `keel volume list` waits this long for an owner's usage figures before printing '-' (a hung router must not hold a listing up). */
  volumeUsageTimeoutMs: 1_000,

  /** Coordination: heartbeat period and how long a silent router stays alive. */
  heartbeatIntervalMs: 1_000,
  routerDeadAfterMs: 5_000,
  coordinationLockRetriesMax: 50,
  /**
   * Coordination: a lock older than this is taken over (its holder was killed or frozen). Well inside
   * routerDeadAfterMs, or a frozen lock holder would stall every other router's heartbeat into looking dead.
   * proper-lockfile refreshes a held lock every stale/2 and accepts no less than 2 s.
   */
  coordinationLockStaleMs: 2_000,
  /** Coordination (Redis): TCP connect + ready check of a connection, and one command's reply deadline. */
  coordinationConnectTimeoutMs: 3_000,
  coordinationCommandTimeoutMs: 2_000,
  /** Coordination (Redis): reconnect delay grows by the base per attempt up to the max (reconnects never stop). */
  coordinationReconnectBackoffBaseMs: 50,
  coordinationReconnectBackoffMaxMs: 500,
  /** Coordination (Redis): records fetched per round trip when listing routers or volumes. */
  coordinationListBatchMax: 512,

  // High availability: DTL, takeover, handover (docs/dtl.md, docs/high-availability.md).
  /** DTL: bytes of one volume's records not yet on the backend (owner's resend backlog and the peer's files); beyond it writes wait. */
  dtlBytesMax: 256 * 1024 * 1024,
  /** DTL: above this fraction of dtlBytesMax the owner closes its TLog early so uploads can trim the DTL. */
  dtlEarlyRollFraction: 0.5,
  /** DTL: a peer's segment file rolls over at this size (trimming deletes whole segments). */
  dtlSegmentBytes: 8 * 1024 * 1024,
  /**
   * DTL: trimmed segment files a peer keeps per stream to write the next segments into. Overwriting pages
   * the page cache holds cost 1.0 us per 4 KiB here, against 2.5 us for a new file's pages (and the unlink).
   */
  dtlSpareSegmentsMax: 16,
  /** DTL: records sent to the peer in one dtl-append (one per event-loop turn, up to this), and per dtl-fetch reply. */
  dtlBatchBytesMax: 8 * 1024 * 1024,
  /** DTL: dtl-append batches on the wire to the peer at once (docs/dtl.md, "Streaming"). */
  dtlBatchesInFlightMax: 4,
  /** DTL: the owner carves its backlog records out of slabs this large (dtl-record-arena.ts). */
  dtlRecordSlabBytes: 4 * 1024 * 1024,
  /** DTL: emptied record slabs kept for reuse, all volumes of a router together (fresh memory costs a page fault per page). */
  dtlRecordSlabPoolBytesMax: 256 * 1024 * 1024,
  /** DTL: how often the owner trims its DTL by the TLogs the uploader has put on the backend. */
  dtlTrimIntervalMs: 100,
  /** DTL: deadline of one request to the peer; past it the peer counts as lost and another is chosen. */
  dtlRequestTimeoutMs: 3_000,
  /** DTL: pause between attempts to find a peer while none is available. */
  dtlPeerRetryMs: 250,
  /** DTL: the pause after a peer's disk was full doubles from dtlPeerRetryMs up to this, until a batch is stored again. */
  dtlPeerNoSpaceBackoffMsMax: 4_000,
  /** DTL: once peers have refused for a full disk this long, sync writes fail with NO_SPACE instead of waiting for one. */
  dtlPeersFullWaitMaxMs: 3_000,
  /**
   * DTL sync with no peer to stream to (every other router gone): after this long, and again every this
   * long while it lasts, the owner rolls its SCO and TLog so that the uploads make the waiting writes
   * durable on the backend and acknowledge them, instead of writes waiting until the edge times them out.
   */
  dtlPeerlessRollMs: 2_000,
  /** Takeover: how long a router probes a volume's recorded owner (connect + hello) before calling it unreachable. */
  ownerProbeTimeoutMs: 1_000,
  /** Takeover: an owner whose heartbeat is younger than this is never taken over (it may be restarting its connection). */
  takeoverHeartbeatAgeMinMs: 2_000,
  /** Handover: how long the old owner waits for its last SCO and TLog to reach the backend before giving up the move. */
  handoverUploadWaitMs: 20_000,


  childRestartsMax: 10,
  childRestartWindowMs: 60_000,
  childRestartBackoffMaxMs: 2_000,
  childStopTimeoutMs: 10_000,
  /** How long `taskset` may take to pin a process at start (docs/cpu-affinity.md); past it the process runs unpinned. */
  cpuPinTimeoutMs: 5_000,

  // Snapshots, clones, scrubbing (docs/snapshots.md).
  /** Snapshots one volume keeps; creating more fails with BUSY (delete old ones). */
  snapshotsPerVolumeMax: 100_000,
  snapshotNameLengthMax: 64,
  snapshotLabelsMax: 32,
  snapshotLabelBytesMax: 256,
  /** Snapshot maps (replayed from the TLogs) kept in RAM per volume, LRU; clones pin their parent's. */
  snapshotMapsCachedMax: 4,
  /**
   * The backend copy of a volume's catalog (router/catalog-mirror.ts) is put at most once per this
   * interval while snapshots are created or deleted (a clone or template change, and a handover, put at
   * once). A put re-encodes the whole catalog: after every change, a volume with 30 000 snapshots spent
   * its router on re-encoding ~3 MB (creates fell to ~50/s, other volumes' 4k QD1 writes saw 100-250 ms
   * stalls). A crash may lose what changed since the last put: those snapshots come back from the TLogs
   * as `snap-<id>` on another router (docs/snapshots.md, "Catalog in the backend").
   */
  catalogCopyIntervalMinMs: 1_000,
  /** ...and a put waits at least this many times as long as the previous put took, so the copy takes at most ~1/(1+x) of the router's time at any size. */
  catalogCopyPutDurationsBetweenPutsMin: 9,
  /** Catalog events encoded between two yields to the event loop (compaction, the backend copy): ~100 KB of JSON, ~1 ms. */
  catalogEncodeEventsPerSliceMax: 1_000,
  /** The scrubber rewrites a SCO's live clusters when at least this fraction of it is garbage. */
  scrubGarbageFractionMin: 0.5,
  /** Background scrubbing pace: clusters copied per second per router. */
  scrubClustersPerSecondMax: 25_600,
  /**
   * Any scrub's pace while the volume serves users (a read or write since the last 64 clusters copied):
   * at full speed a scrub took 4k QD1 writes from about 1900 to 1150-1330 IOPS and their p99 from
   * 1.2-1.8 ms to 5 ms. Parallax's collector has the same goal: interfere as little as possible.
   */
  scrubClustersPerSecondBusyMax: 1024,
  /** Live clusters the scrubber reads before it rewrites them, in LBA order: its buffer (16 MiB). */
  scrubRewriteClustersMax: 4096,
  /**
   * One scrubber read of a SCO covers at most this many clusters (1 MiB), and bridges at most
   * scrubReadGapClustersMax dead clusters between two live ones: on a backend every request has a fixed
   * cost (s3rver serves about 1600 GETs a second), so reading 64 KiB more beats a second request.
   */
  scrubReadClustersMax: 256,
  scrubReadGapClustersMax: 16,
  /** The scrubber's reads in flight at once (each with a scrubReadClustersMax buffer). */
  scrubReadsInFlightMax: 4,
  /** `keel scrub --defrag`: LBA extents of this many clusters (1 MiB) are rewritten in order when fragmented... */
  defragExtentClusters: 256,
  /** ...into at least this many runs (an average run of 128 KiB or less; on s3rver each run is a GET)... */
  defragRunsPerExtentMin: 8,
  /** ...up to this many clusters per scrub (1 GiB); the report counts the fragmented extents left. */
  defragClustersPerScrubMax: 262_144,
  /** How often the background scrubber looks at a router's volumes. */
  scrubIntervalMs: 60_000,
  /** How long a scrub waits for the TLog recording its deletions to reach the backend before deleting objects. */
  scrubUploadWaitMs: 30_000,
  /** Clusters per extent in an export stream (docs/export-stream.md). */
  exportExtentClustersMax: 256,

  /**
   * Logs: bytes of log lines a process holds while its log output (stderr) does not take them, a full
   * disk say; lines beyond are dropped and counted (shared/logger.ts).
   */
  logBufferBytesMax: 4 * 1024 * 1024,
  /**
   * Logs: lines one kind of event a peer can cause (a bad frame, a refused connection, a failed request)
   * writes per logRateIntervalMs; the rest are counted into one summary line (shared/log-rate-limit.ts).
   * Logged once per event, a client sending garbage in a loop made a router write without bound.
   */
  logLinesPerKeyMax: 10,
  logRateIntervalMs: 10_000,
  /** Logs: kinds of event one rate limiter tracks at once; further kinds share one budget. */
  logRateKeysMax: 256,
} as const;

export type Limits = typeof limits;

/** Throws BAD_CONFIG when limits contradict each other. Call at process start. */
export function checkLimits(l: Limits = limits): void {
  const fail = (why: string) => {
    throw KeelError.badConfig(`limits: ${why}`);
  };
  if (l.wireGatherPoolBytesMax < l.wireGatherClassBytes) fail('wireGatherPoolBytesMax must hold at least one wireGatherClassBytes buffer');
  if (l.wireFrameBytesMax < l.nbdRequestBytesMax + l.wireHeaderBytesMax)
    fail('wireFrameBytesMax must hold an nbdRequestBytesMax payload plus a header');
  if (l.wireHelloFrameBytesMax < 1024 || l.wireHelloFrameBytesMax > framePreambleBytes + l.wireHeaderBytesMax)
    fail('wireHelloFrameBytesMax must hold a hello (1 KiB at least) and be no larger than a frame without payload (preamble + wireHeaderBytesMax): a hello has none');
  if (l.wireServerPeerFrameBytesInFlightMax < l.wireFrameBytesMax || l.wireServerFrameBytesInFlightMax - l.wireServerPeerFrameBytesInFlightMax < l.wireFrameBytesMax)
    fail('wireServerFrameBytesInFlightMax must hold a wireFrameBytesMax frame for peer routers (wireServerPeerFrameBytesInFlightMax) and another for everyone else, or a largest frame could never be read');
  if (l.wireFrameReceiveTimeoutMs < l.wireRequestTimeoutMs)
    fail('wireFrameReceiveTimeoutMs must be at least wireRequestTimeoutMs, or a router cuts off frames its client still waits for');
  if (l.wireConnectionsMax < 2 * l.volumesPerRouterMax + l.nbdConnectionsMax)
    fail('wireConnectionsMax must hold an edge connection and a DTL stream per volume a router may own, plus one edge\'s NBD connections');
  if (l.dtlBatchesInFlightMax < 1 || l.dtlBatchesInFlightMax > l.wireRequestsInFlightMax)
    fail('dtlBatchesInFlightMax must be at least 1 and fit in the wire window (wireRequestsInFlightMax)');
  if (l.wireRequestsInFlightMax < l.nbdRequestsInFlightMax)
    fail('wireRequestsInFlightMax must be at least nbdRequestsInFlightMax, or one NBD client could stall the window');
  if (l.nbdRequestBytesInFlightMax < l.nbdRequestBytesMax)
    fail('nbdRequestBytesInFlightMax must hold at least one nbdRequestBytesMax request');
  if (l.volumesOpeningAtStartMax < 1) fail('volumesOpeningAtStartMax must be at least 1');
  if (l.nbdHandshakingConnectionsMax < 1 || l.nbdHandshakingConnectionsMax > l.nbdConnectionsMax)
    fail('nbdHandshakingConnectionsMax must lie in [1, nbdConnectionsMax]');
  if (l.nbdEdgeRequestBytesInFlightMax < l.nbdRequestBytesInFlightMax)
    fail('nbdEdgeRequestBytesInFlightMax must hold at least one connection\'s nbdRequestBytesInFlightMax');
  if (!(l.nbdPayloadReceiveTimeoutMs > 0 && l.nbdReplyDrainTimeoutMs > 0))
    fail('nbdPayloadReceiveTimeoutMs and nbdReplyDrainTimeoutMs must be positive, or bytes held in nbdEdgeRequestBytesInFlightMax could be pinned by one client for good');
  if (l.scoSizeBytesMin % clusterSizeBytes !== 0 || l.scoSizeBytesMax % clusterSizeBytes !== 0)
    fail('SCO sizes must be whole clusters');
  if (l.scoSizeBytesDefault < l.scoSizeBytesMin || l.scoSizeBytesDefault > l.scoSizeBytesMax)
    fail('scoSizeBytesDefault must lie within [scoSizeBytesMin, scoSizeBytesMax]');
  if (l.scoSizeBytesMax / clusterSizeBytes > 65536) fail('a SCO may hold at most 65536 clusters (16-bit slot)');
  if (l.appendBatchClustersMax * clusterSizeBytes < l.nbdRequestBytesMax)
    fail('appendBatchClustersMax must hold one nbdRequestBytesMax write, or a large write could never be appended');
  if (l.exportExtentClustersMax * clusterSizeBytes > l.nbdRequestBytesMax)
    fail('exportExtentClustersMax must fit one nbdRequestBytesMax read (export reads an extent at a time)');
  if (!(l.scrubGarbageFractionMin > 0 && l.scrubGarbageFractionMin <= 1)) fail('scrubGarbageFractionMin must lie in (0, 1]');
  if (!(l.scrubClustersPerSecondBusyMax > 0 && l.scrubClustersPerSecondBusyMax <= l.scrubClustersPerSecondMax)) {
    fail('scrubClustersPerSecondBusyMax must lie in (0, scrubClustersPerSecondMax]');
  }
  if (l.scrubReadGapClustersMax >= l.scrubReadClustersMax) fail('scrubReadGapClustersMax must be below scrubReadClustersMax');
  if (l.defragExtentClusters > l.scrubRewriteClustersMax) fail('defragExtentClusters must fit the scrubber\'s buffer (scrubRewriteClustersMax)');
  if (l.defragRunsPerExtentMin < 2 || l.defragRunsPerExtentMin > l.defragExtentClusters) fail('defragRunsPerExtentMin must lie in [2, defragExtentClusters]');
  if (l.scrubReadsInFlightMax < 1 || l.scrubRewriteClustersMax < 1) fail('the scrubber needs at least one read in flight and one cluster to rewrite');
  if (l.backendRetryBackoffBaseMs > l.backendRetryBackoffMaxMs)
    fail('backendRetryBackoffBaseMs must not exceed backendRetryBackoffMaxMs');
  if (l.backendParityPoolBytesMax < l.backendParityBufferBytesMax) fail('backendParityPoolBytesMax must hold at least one backendParityBufferBytesMax buffer');
  if (l.scoUploadBufferBytesMax < l.scoSizeBytesMax) fail('scoUploadBufferBytesMax must hold a scoSizeBytesMax SCO, or full SCOs would not use the pool');
  if (l.uploadBufferClassBytes > l.scoUploadBufferBytesMax || l.uploadBufferClassBytes > l.backendParityBufferBytesMax)
    fail('uploadBufferClassBytes must not exceed the upload and parity buffer bounds');
  if (l.scoUploadBufferPoolBytesMax < l.scoUploadBufferBytesMax) fail('scoUploadBufferPoolBytesMax must hold at least one scoUploadBufferBytesMax buffer');
  if (l.dtlSpareSegmentsMax * l.dtlSegmentBytes > l.dtlBytesMax)
    fail('dtlSpareSegmentsMax segments must fit in dtlBytesMax, so spare files add at most one full stream of disk');
  if (l.dtlRecordSlabPoolBytesMax < l.dtlRecordSlabBytes) fail('dtlRecordSlabPoolBytesMax must hold at least one dtlRecordSlabBytes slab');
  if (l.replyBufferPoolBytesMax < l.replyBufferBytesMax) fail('replyBufferPoolBytesMax must hold at least one replyBufferBytesMax buffer');
  if (l.inlineWriteBytesMax < clusterSizeBytes) fail('inlineWriteBytesMax must allow a one-cluster write inline');
  if (l.inlineIoSlowUsMax <= 0 || l.inlineIoPauseMs <= 0 || l.inlineIoSlowStreakMax < 1)
    fail('inlineIoSlowUsMax, inlineIoPauseMs and inlineIoSlowStreakMax must be positive');
  if (l.fileWriteBytesMax < clusterSizeBytes || l.fileWriteBytesMax % clusterSizeBytes !== 0)
    fail('fileWriteBytesMax must be whole clusters, at least one');
  if (l.directWriteStagingBuffersMax < 1) fail('directWriteStagingBuffersMax must be at least 1');
  if (!Number.isInteger(l.writevFramesMax) || l.writevFramesMax < 1) fail('writevFramesMax must be a whole number of frames, at least 1');
  if (l.backendListTimeoutMs < l.backendRequestTimeoutMs) fail('backendListTimeoutMs must allow at least one full request');
  if (l.s3GetSocketsMax < l.backendFragmentRequestsInFlightMax)
    fail('s3GetSocketsMax must be at least backendFragmentRequestsInFlightMax, or GETs the store allows would queue for a socket');
  if (l.s3PresignedUrlReuseMs + l.backendRequestTimeoutMs >= l.s3PresignedUrlExpirySeconds * 1000)
    fail('s3PresignedUrlReuseMs plus backendRequestTimeoutMs must end before s3PresignedUrlExpirySeconds, so no GET outlives its URL');
  if (l.s3PresignedUrlExpirySeconds > 604_800) fail('s3PresignedUrlExpirySeconds must be at most 7 days (S3 refuses longer)');
  if (l.backendFragmentRequestsInFlightMax < 1) fail('backendFragmentRequestsInFlightMax must be at least 1');
  if (l.remoteReadAheadBytesMax < clusterSizeBytes || l.remoteReadAheadBytesMax % clusterSizeBytes !== 0)
    fail('remoteReadAheadBytesMax must be whole clusters, at least one');
  if (l.writeBufferSoftFraction <= 0 || l.writeBufferSoftFraction >= 1) fail('writeBufferSoftFraction must lie in (0, 1)');
  if (l.writeBufferBytesDefault < (l.tlogScosMax + 2) * l.scoSizeBytesDefault)
    fail('writeBufferBytesDefault must hold tlogScosMax + 2 SCOs of scoSizeBytesDefault, or a TLog could never close');
  if (l.ramCacheSlabBytes % clusterSizeBytes !== 0 || l.ramCacheSlabBytes <= 0) fail('ramCacheSlabBytes must be a positive number of whole clusters');
  if (l.ramCacheReadClustersMax < 1) fail('ramCacheReadClustersMax must be at least 1, or the RAM cache is never used');
  if (l.readCacheBlockBytes % clusterSizeBytes !== 0 || l.readCacheBlockBytes / clusterSizeBytes > 32)
    fail('readCacheBlockBytes must be whole clusters, at most 32 (one u32 presence mask per block)');
  if (!Number.isInteger(l.scoSparesMax) || l.scoSparesMax < 0) fail('scoSparesMax must be a whole number of files, 0 to turn spares off');
  if (l.scoBackgroundSyncBytes > l.scoSizeBytesMin) fail('scoBackgroundSyncBytes must not exceed scoSizeBytesMin, or small SCOs would seal with their whole backlog');
  if (l.coordinationLockStaleMs * 2 > l.routerDeadAfterMs)
    fail('coordinationLockStaleMs must be at most half of routerDeadAfterMs, or a frozen lock holder makes live routers look dead');
  if (l.routerDeadAfterMs < 3 * l.heartbeatIntervalMs) fail('routerDeadAfterMs must cover at least 3 heartbeats');
  if (l.coordinationCommandTimeoutMs * 2 > l.routerDeadAfterMs)
    fail('coordinationCommandTimeoutMs must let a router retry a timed-out heartbeat before it is declared dead');
  if (l.coordinationReconnectBackoffBaseMs > l.coordinationReconnectBackoffMaxMs)
    fail('coordinationReconnectBackoffBaseMs must not exceed coordinationReconnectBackoffMaxMs');
  if (l.dtlPeerNoSpaceBackoffMsMax < l.dtlPeerRetryMs) fail('dtlPeerNoSpaceBackoffMsMax must be at least dtlPeerRetryMs');
  if (l.dtlPeerlessRollMs <= l.dtlTrimIntervalMs || 2 * l.dtlPeerlessRollMs >= l.wireRequestTimeoutMs)
    fail('dtlPeerlessRollMs must exceed dtlTrimIntervalMs, and two of them (the roll, then its upload) must end before wireRequestTimeoutMs');
  if (l.dtlPeersFullWaitMaxMs + l.dtlPeerNoSpaceBackoffMsMax >= l.wireRequestTimeoutMs)
    fail('dtlPeersFullWaitMaxMs plus dtlPeerNoSpaceBackoffMsMax must end before wireRequestTimeoutMs, so writes fail with ENOSPC before the edge times them out');
  if (l.ownerWaitMaxMs < l.routerDeadAfterMs) fail('ownerWaitMaxMs must outlast routerDeadAfterMs');
  if (l.wireRequestTimeoutMs > l.ownerWaitMaxMs) fail('wireRequestTimeoutMs must not exceed ownerWaitMaxMs');
  if (l.logLinesPerKeyMax < 1 || l.logRateIntervalMs <= 0 || l.logRateKeysMax < 1)
    fail('logLinesPerKeyMax, logRateIntervalMs and logRateKeysMax must be positive, or no line of a peer\'s making would ever be logged');
  if (l.volumeUsageTimeoutMs <= 0 || l.volumeUsageTimeoutMs > l.mgmtRequestTimeoutMs) fail('volumeUsageTimeoutMs must be positive and within mgmtRequestTimeoutMs');
}
