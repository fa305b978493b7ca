/**
 * Which objects exist under a name prefix. The object store keeps no index (placement is computed), so
 * the names come from listing the ASDs' fragment keys (`<name>.frag<i>`, docs/backend-format.md). Every
 * object has k+m fragments on distinct ASDs, so an object shows up as long as one ASD holding one of its
 * fragments answers: the listing tolerates up to `unreachableMax` ASDs that fail (default: all but one),
 * and reports which ones did. A listing may take many pages: its deadline (`timeoutMs`) covers all of
 * them, while each page is one request under the ASD's own request deadline.
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

export interface ListOptions {
  /** ASDs that may fail before the listing does; default all but one. */
  unreachableMax?: number;
  /** Deadline of the whole listing on one ASD; default limits.backendListTimeoutMs. */
  timeoutMs?: number;
}

export async function listObjectNames(asds: readonly Asd[], prefix: string, options: ListOptions = {}): Promise<ObjectListing> {
  const unreachableMax = options.unreachableMax ?? asds.length - 1;
  const names = new Set<string>();
  const unreachable: ObjectListing['unreachable'] = [];
  await Promise.all(
    asds.map(async (asd) => {
      const signal = AbortSignal.timeout(options.timeoutMs ?? limits.backendListTimeoutMs);
      try {
        for (const key of await asd.list(prefix, signal)) if (fragmentSuffix.test(key)) names.add(key.replace(fragmentSuffix, ''));
      } catch (err) {
        unreachable.push({ asdId: asd.id, error: (err as Error).message });
      }
    }),
  );
  if (unreachable.length > unreachableMax)
    throw KeelError.io(`listing ${prefix}: ${unreachable.length} of ${asds.length} ASDs did not answer (${unreachable[0]!.asdId}: ${unreachable[0]!.error})`, undefined, {
      unreachable,
    });
  return { names: [...names].sort(), unreachable };
}
