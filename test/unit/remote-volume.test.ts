import { afterEach, describe, expect, it } from 'vitest';
import { KeelError } from '../../shared/errors.ts';
import { silentLogger } from '../../shared/logger.ts';
import { RpcServer } from '../../shared/wire/rpc-server.ts';
import { TcpTransport } from '../../shared/wire/tcp-transport.ts';
import { createVolumeService } from '../../router/volume-service.ts';
import { RemoteVolume, type OwnerLocator } from '../../edge/remote-volume.ts';
import { delay, MemoryVolume, MemoryVolumeHost, patternBytes } from '../helpers/wire-test-volumes.ts';

const transport = new TcpTransport();
const logger = silentLogger();
const cleanups: Array<() => unknown> = [];
const clusterBytes = 4096;

afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

/** A locator the test points at whichever router should own the volume now. */
class TestLocator implements OwnerLocator {
  owner: { routerId: string; address: string } | undefined;
  lookups = 0;
  async locate(volumeName: string) {
    this.lookups++;
    if (volumeName !== 'v1') throw KeelError.volumeNotFound(volumeName);
    if (!this.owner) throw KeelError.noOwner(volumeName, 0);
    return this.owner;
  }
}

interface Router {
  host: MemoryVolumeHost;
  server: RpcServer;
  address: string;
}

async function startRouter(routerId: string, volume: MemoryVolume, address = '127.0.0.1:0'): Promise<Router> {
  const host = new MemoryVolumeHost(routerId, new Map([['v1', volume]]));
  const server = new RpcServer({ transport, handler: createVolumeService(host, logger), logger, routerId });
  const bound = await server.listen(address);
  cleanups.push(() => server.close());
  return { host, server, address: bound };
}

async function openVolume(locator: OwnerLocator, options: { ownerWaitMaxMs?: number; requestTimeoutMs?: number } = {}) {
  const volume = await RemoteVolume.open('v1', locator, { transport, logger, ownerWaitMaxMs: 5_000, ...options });
  cleanups.push(() => volume.close());
  return volume;
}

describe('RemoteVolume', () => {
  it('reads and writes through the owning router', async () => {
    const memory = new MemoryVolume(Buffer.alloc(1 << 20));
    const router = await startRouter('r1', memory);
    const locator = new TestLocator();
    locator.owner = { routerId: 'r1', address: router.address };
    const volume = await openVolume(locator);
    expect(volume.sizeBytes).toBe(1 << 20);
    await volume.write(100, patternBytes(5000, 1), false);
    expect((await volume.read(100, 5000)).equals(patternBytes(5000, 1))).toBe(true);
    await volume.writeZeroes(200, 10, true);
    await volume.trim(0, 4096, false);
    await volume.flush();
    expect((await volume.read(0, 4096)).every((b) => b === 0)).toBe(true);
    expect(volume.stats()).toMatchObject({ routerId: 'r1', failovers: 0 });
  });

  it('survives the death of its router with 100 writes in flight: all complete and read back', async () => {
    const memory = new MemoryVolume(Buffer.alloc(1 << 20));
    const first = await startRouter('r1', memory);
    // The first router accepts writes but is slow to finish them, so they are in flight when it dies.
    let writesStarted = 0;
    memory.hook = async (op) => {
      if (op !== 'write') return;
      writesStarted++;
      await delay(200);
    };
    const locator = new TestLocator();
    locator.owner = { routerId: 'r1', address: first.address };
    const volume = await openVolume(locator);

    const writes = Array.from({ length: 100 }, (_, i) => volume.write(i * clusterBytes, patternBytes(clusterBytes, i + 1), false));
    while (writesStarted < 50) await delay(2);
    expect(volume.stats().unacknowledgedRequests).toBe(100);
    await first.server.close(); // listener closed, sockets destroyed
    memory.hook = undefined;

    // The edge keeps trying the dead address for a while; then a new owner appears on another port.
    await delay(300);
    const second = await startRouter('r2', memory);
    expect(second.address).not.toBe(first.address);
    locator.owner = { routerId: 'r2', address: second.address };

    await Promise.all(writes);
    const stats = volume.stats();
    expect(stats).toMatchObject({ routerId: 'r2', failovers: 1, unacknowledgedRequests: 0 });
    expect(stats.resentRequests).toBe(100);
    for (let i = 0; i < 100; i++) {
      expect((await volume.read(i * clusterBytes, clusterBytes)).equals(patternBytes(clusterBytes, i + 1))).toBe(true);
    }
  });

  it('keeps data intact through repeated router deaths under a steady write and read load', async () => {
    const memory = new MemoryVolume(Buffer.alloc(4 << 20));
    memory.hook = () => delay(Math.random() * 3);
    let router = await startRouter('r0', memory);
    const locator = new TestLocator();
    locator.owner = { routerId: 'r0', address: router.address };
    const volume = await openVolume(locator);
    const expected = Buffer.alloc(4 << 20);
    let stop = false;
    let verifiedReads = 0;
    const worker = async (lane: number) => {
      for (let round = 0; !stop; round++) {
        // Each lane owns its own clusters, so its writes and reads are ordered and checkable.
        const cluster = lane + 32 * (round % 32);
        const data = patternBytes(clusterBytes, lane * 1000 + round);
        await volume.write(cluster * clusterBytes, data, round % 7 === 0);
        data.copy(expected, cluster * clusterBytes);
        const back = await volume.read(cluster * clusterBytes, clusterBytes);
        expect(back.equals(data)).toBe(true);
        verifiedReads++;
      }
    };
    const workers = Array.from({ length: 32 }, (_, lane) => worker(lane));
    for (let generation = 1; generation <= 4; generation++) {
      await delay(100);
      await router.server.close();
      await delay(50);
      router = await startRouter(`r${generation}`, memory);
      locator.owner = { routerId: `r${generation}`, address: router.address };
    }
    await delay(100);
    stop = true;
    await Promise.all(workers);
    expect(volume.stats().failovers).toBe(4);
    expect(verifiedReads).toBeGreaterThan(100);
    expect((await volume.read(0, 4 << 20)).equals(expected)).toBe(true);
  });

  it('follows a NOT_OWNER reply to the new owner and re-sends what was refused', async () => {
    const memory = new MemoryVolume(Buffer.alloc(1 << 20));
    const first = await startRouter('r1', memory);
    const second = await startRouter('r2', memory);
    second.host.owner = 'r1';
    const locator = new TestLocator();
    locator.owner = { routerId: 'r1', address: first.address };
    const volume = await openVolume(locator);
    await volume.write(0, patternBytes(clusterBytes, 7), false);

    // Ownership moves to r2; r1 refuses from now on, and the locator learns of the move a bit later.
    first.host.owner = 'r2';
    second.host.owner = 'r2';
    setTimeout(() => (locator.owner = { routerId: 'r2', address: second.address }), 100);
    await volume.write(clusterBytes, patternBytes(clusterBytes, 8), true);
    expect(volume.stats()).toMatchObject({ routerId: 'r2', failovers: 1 });
    expect((await volume.read(0, 2 * clusterBytes)).equals(Buffer.concat([patternBytes(clusterBytes, 7), patternBytes(clusterBytes, 8)]))).toBe(
      true,
    );
    expect(first.host.openHandles).toBe(0); // the edge left r1 and r1 released the volume
  });

  it('opens through a router that first answers NOT_OWNER', async () => {
    const memory = new MemoryVolume(Buffer.alloc(1 << 20));
    const first = await startRouter('r1', memory);
    first.host.owner = 'r2';
    const second = await startRouter('r2', memory);
    const locator = new TestLocator();
    locator.owner = { routerId: 'r1', address: first.address };
    setTimeout(() => (locator.owner = { routerId: 'r2', address: second.address }), 50);
    const volume = await openVolume(locator);
    expect(volume.stats().routerId).toBe('r2');
  });

  it('fails with NO_OWNER after ownerWaitMaxMs when no router answers, then recovers for new requests', async () => {
    const memory = new MemoryVolume(Buffer.alloc(1 << 20));
    const router = await startRouter('r1', memory);
    const address = router.address;
    const locator = new TestLocator();
    locator.owner = { routerId: 'r1', address };
    const volume = await openVolume(locator, { ownerWaitMaxMs: 1500 });
    await router.server.close();

    const started = Date.now();
    const results = await Promise.allSettled([volume.read(0, 4096), volume.write(0, Buffer.alloc(4096, 1), false), volume.flush()]);
    const waitedMs = Date.now() - started;
    for (const result of results) {
      expect(result).toMatchObject({ status: 'rejected', reason: { code: 'NO_OWNER', details: { volume: 'v1' } } });
    }
    expect(waitedMs).toBeGreaterThanOrEqual(1400);
    expect(waitedMs).toBeLessThan(3000);
    expect(locator.lookups).toBeGreaterThan(3);

    // A router comes back (on the same address): the next request searches afresh and succeeds.
    await startRouter('r1', memory, address);
    await volume.write(0, patternBytes(4096, 9), false);
    expect((await volume.read(0, 4096)).equals(patternBytes(4096, 9))).toBe(true);
  });

  it('fails open with NO_OWNER when no router exists, and VOLUME_NOT_FOUND at once for an unknown volume', async () => {
    const locator = new TestLocator();
    const started = Date.now();
    await expect(RemoteVolume.open('v1', locator, { transport, logger, ownerWaitMaxMs: 1500 })).rejects.toMatchObject({
      code: 'NO_OWNER',
    });
    expect(Date.now() - started).toBeGreaterThanOrEqual(1400);
    const quick = Date.now();
    await expect(RemoteVolume.open('nope', locator, { transport, logger, ownerWaitMaxMs: 1500 })).rejects.toMatchObject({
      code: 'VOLUME_NOT_FOUND',
    });
    expect(Date.now() - quick).toBeLessThan(500);
  });

  it('re-sends a request that timed out', async () => {
    const memory = new MemoryVolume(patternBytes(1 << 20, 3));
    const router = await startRouter('r1', memory);
    let hungOnce = false;
    memory.hook = (op, offset) => {
      if (op === 'read' && offset === 8192 && !hungOnce) {
        hungOnce = true;
        return new Promise(() => {}); // the router loses this request
      }
    };
    const locator = new TestLocator();
    locator.owner = { routerId: 'r1', address: router.address };
    const volume = await openVolume(locator, { requestTimeoutMs: 200 });
    const data = await volume.read(8192, 4096);
    expect(data.equals(patternBytes(1 << 20, 3).subarray(8192, 8192 + 4096))).toBe(true);
    expect(hungOnce).toBe(true);
    expect(volume.stats()).toMatchObject({ failovers: 1, resentRequests: 1 });
  });

  it('returns volume errors to the caller without retrying', async () => {
    const memory = new MemoryVolume(Buffer.alloc(1 << 20));
    const router = await startRouter('r1', memory);
    memory.hook = (op) => {
      if (op === 'flush') throw KeelError.io('disk on fire');
    };
    const locator = new TestLocator();
    locator.owner = { routerId: 'r1', address: router.address };
    const volume = await openVolume(locator);
    await expect(volume.read(1 << 20, 1)).rejects.toMatchObject({ code: 'OUT_OF_RANGE' });
    await expect(volume.flush()).rejects.toMatchObject({ code: 'IO', message: 'disk on fire' });
    memory.hook = (op) => {
      if (op === 'read') throw KeelError.checksumMismatch('cluster 3');
    };
    await expect(volume.read(0, 1)).rejects.toMatchObject({ code: 'CHECKSUM_MISMATCH' });
    expect(volume.stats()).toMatchObject({ failovers: 0, unacknowledgedRequests: 0 });
  });

  it('waits for outstanding requests on close and refuses new ones', async () => {
    const memory = new MemoryVolume(Buffer.alloc(1 << 20));
    const router = await startRouter('r1', memory);
    memory.hook = () => delay(50);
    const locator = new TestLocator();
    locator.owner = { routerId: 'r1', address: router.address };
    const volume = await RemoteVolume.open('v1', locator, { transport, logger });
    const write = volume.write(0, patternBytes(4096, 5), false);
    const closing = volume.close();
    await expect(volume.read(0, 1)).rejects.toMatchObject({ code: 'CLOSED' });
    await write;
    await closing;
    expect(memory.bytes.subarray(0, 4096).equals(patternBytes(4096, 5))).toBe(true);
    await delay(20);
    expect(router.host.openHandles).toBe(0);
  });

  it('measures 4 KiB read round trips at 32 in flight (informational)', async () => {
    const memory = new MemoryVolume(Buffer.alloc(64 << 20));
    const router = await startRouter('r1', memory);
    const locator = new TestLocator();
    locator.owner = { routerId: 'r1', address: router.address };
    const volume = await openVolume(locator);
    const durationMs = 1000;
    let completed = 0;
    const deadline = Date.now() + durationMs;
    const worker = async (n: number) => {
      for (let i = n; Date.now() < deadline; i += 32) {
        await volume.read((i % 16384) * 4096, 4096);
        completed++;
      }
    };
    const started = Date.now();
    await Promise.all(Array.from({ length: 32 }, (_, n) => worker(n)));
    const perSecond = Math.round((completed * 1000) / (Date.now() - started));
    console.log(`wire round trips: ${perSecond} 4 KiB reads/s at 32 in flight over loopback`);
    expect(completed).toBeGreaterThan(0);
  });
});
