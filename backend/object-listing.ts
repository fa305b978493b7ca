/**
 * Which objects exist under a name prefix. The object store keeps no index (placement is computed), so
 * the names come from listing the ASDs' fragment keys (`<name>.frag<i>`, docs/backend-format.md). Every
 * object has k+m fragments on distinct ASDs, so an object shows up as long as one ASD holding one of its
 * fragments answers: the listing tolerates up to `unreachableMax` ASDs that fail (default: all but one),
 * and reports which ones did.
 */
import { KeelError } from '../shared/errors.ts';
import { limits } from '../shared/limits.ts';
import type { Asd } from './asd.ts';

const fragmentSuffix = /\.frag\d+$/;

export interface ObjectListing {
  names: string[];
  /** ASDs whose list call failed (their fragments may be missing from `names`' evidence). */
  unreachable: Array<{ asdId: string; error: string }>;
}

export async function listObjectNames(asds: readonly Asd[], prefix: string, unreachableMax = asds.length - 1): Promise<ObjectListing> {
  const names = new Set<string>();
  const unreachable: ObjectListing['unreachable'] = [];
  await Promise.all(
    asds.map(async (asd) => {
      const signal = AbortSignal.timeout(limits.backendRequestTimeoutMs);
      try {
        for (const key of await asd.list(prefix, signal)) if (fragmentSuffix.test(key)) names.add(key.replace(fragmentSuffix, ''));
      } catch (err) {
        unreachable.push({ asdId: asd.id, error: (err as Error).message });
      }
    }),
  );
  if (unreachable.length > unreachableMax)
    throw KeelError.io(`listing ${prefix}: ${unreachable.length} of ${asds.length} ASDs did not answer`, undefined, { unreachable });
  return { names: [...names].sort(), unreachable };
}
