#!/usr/bin/env node
/**
 * Bundles the `keel` program (cli/main.ts and everything it imports from this repository) into plain
 * JavaScript under dist/, with esbuild. bin/keel.js runs the bundle while every source file it was built
 * from still has the same content (dist/inputs.json holds their digest), and the TypeScript sources
 * through tsx otherwise. Content, not modification times: a copy that keeps older times (rsync -a, cp -p,
 * an unpacked archive) must not leave a stale bundle running; hashing the ~0.8 MB of sources takes a few ms.
 *
 * Why: tsx runs its loader hooks in a worker thread with its own V8 heap. That cost every Keel process
 * about 30 MB of RSS (an idle edge: 121 MB from source, 90 MB from the bundle) and a transform of each
 * module at start-up. npm runs this script on install (`prepare`), so `npm install && npm start` runs the
 * bundle; after an edit, `npm run build` brings it back (until then the sources run, so nothing stale runs).
 *
 * Dependencies stay external (node_modules is resolved at run time, native addons included); the modules
 * a command imports lazily (the edge's and the router's main) become chunks of their own.
 */
import { build } from 'esbuild';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { sourcesDigest } from '../bin/sources-digest.js';

const repoDir = fileURLToPath(new URL('..', import.meta.url));
const distDir = path.join(repoDir, 'dist');

await rm(distDir, { recursive: true, force: true });
await mkdir(distDir, { recursive: true });
const result = await build({
  absWorkingDir: repoDir,
  entryPoints: ['cli/main.ts'],
  outdir: distDir,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  packages: 'external',
  sourcemap: 'linked',
  metafile: true,
  logLevel: 'warning',
});
const inputs = Object.keys(result.metafile.inputs).sort();
// Digested after the build: a file saved while esbuild ran then differs from the digest, and the sources run.
await writeFile(path.join(distDir, 'inputs.json'), JSON.stringify({ digest: sourcesDigest(repoDir, inputs), inputs }, null, 1) + '\n');
console.error(`keel: built dist/ from ${inputs.length} source files`);
