/**
 * The CLI's line to a router's admin ops (docs/wire-protocol.md, "Admin ops"): find the volume's owner
 * through coordination, connect as a `tool`, send one request, decode the JSON reply payload. A
 * NOT_OWNER answer (ownership moved) is retried on the new owner a bounded number of times.
 */
import { isRouterAlive, type Coordination } from '../shared/coordination.ts';
import { CoordinationOwnerLocator } from '../edge/owner-locator.ts';
import { KeelError, isKeelError } from '../shared/errors.ts';
import { limits } from '../shared/limits.ts';
import { silentLogger } from '../shared/logger.ts';
import { RpcClient, type RpcRequestFields } from '../shared/wire/rpc-client.ts';
import { TcpTransport } from '../shared/wire/tcp-transport.ts';

/** Admin ops may run long (a rollback or scrub of a large volume). */
export const adminRequestTimeoutMs = 30 * 60_000;
const notOwnerRetriesMax = 3;

export async function connectTool(address: string, requestTimeoutMs = adminRequestTimeoutMs): Promise<RpcClient> {
  return RpcClient.connect(address, { transport: new TcpTransport(), logger: silentLogger(), role: 'tool', requestTimeoutMs });
}

/** Connects to the router that owns (or will claim) `volume`. */
export async function connectToOwner(coordination: Coordination, volume: string): Promise<RpcClient> {
  const owner = await new CoordinationOwnerLocator(coordination).locate(volume);
  return connectTool(owner.address);
}

export async function volumeAdmin<T>(coordination: Coordination, volume: string, fields: RpcRequestFields): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    const client = await connectToOwner(coordination, volume);
    try {
      const response = await client.request({ ...fields, volume });
      return JSON.parse(response.payload.toString('utf8')) as T;
    } catch (err) {
      if (!isKeelError(err, 'NOT_OWNER') || attempt >= notOwnerRetriesMax) throw err;
    } finally {
      client.close();
    }
  }
}

/** Sends `fields` to every live router and returns their answers (for `keel tree`). */
export async function everyRouterAdmin<T>(coordination: Coordination, fields: RpcRequestFields): Promise<T[]> {
  const nowMs = Date.now();
  const routers = (await coordination.listRouters()).filter((r) => isRouterAlive(r, nowMs, limits.routerDeadAfterMs));
  if (routers.length === 0) throw new KeelError('NO_OWNER', 'no live router: start the cluster (keel up)');
  return Promise.all(
    routers.map(async (router) => {
      const client = await connectTool(router.address);
      try {
        return JSON.parse((await client.request(fields)).payload.toString('utf8')) as T;
      } finally {
        client.close();
      }
    }),
  );
}
