#!/usr/bin/env node
// Runs the bundle in dist/ (scripts/build.mjs) while the sources it was built from are unchanged;
// otherwise runs the TypeScript sources directly through tsx, so an edit takes effect at once and
// `npm install && npm start` needs no separate build step. KEEL_FROM_SOURCE=1 forces the sources.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { sourcesDigest } from './sources-digest.js';

const repoDir = fileURLToPath(new URL('..', import.meta.url));

function bundleIsCurrent() {
  if (process.env.KEEL_FROM_SOURCE === '1') return false;
  try {
    const { digest, inputs } = JSON.parse(readFileSync(`${repoDir}dist/inputs.json`, 'utf8'));
    return inputs.length > 0 && sourcesDigest(repoDir, inputs) === digest;
  } catch {
    return false; // no bundle, or a source it was built from is gone
  }
}

// The AWS SDK prints a multi-line notice on every S3 command that its future releases need Node.js 22; the
// release package-lock.json pins works on the Node.js 20 Keel supports. =false shows it again.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

// `keel --version` says which one runs; child processes decide for themselves and overwrite it.
if (bundleIsCurrent()) {
  process.env.KEEL_RUNS_FROM = 'bundle';
  process.setSourceMapsEnabled(true); // stack traces name the TypeScript files and lines
  await import('../dist/main.js');
} else {
  process.env.KEEL_RUNS_FROM = 'source';
  const { register } = await import('tsx/esm/api');
  register();
  await import('../cli/main.ts');
}
