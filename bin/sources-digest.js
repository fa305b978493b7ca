// The digest that ties dist/ to the sources it was built from (scripts/build.mjs, bin/keel.js): SHA-256
// over each source's path and content, in the order given. Plain JavaScript: it runs before tsx is loaded.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';

/** Throws when a source cannot be read (it was removed or renamed). */
export function sourcesDigest(repoDir, inputs) {
  const hash = createHash('sha256');
  for (const input of inputs) hash.update(input).update('\0').update(readFileSync(path.join(repoDir, input))).update('\0');
  return hash.digest('hex');
}
