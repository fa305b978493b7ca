#!/usr/bin/env node
// Runs the bundle in dist/ (scripts/build.mjs) while it is newer than every source file it was built
// from; otherwise runs the TypeScript sources directly through tsx, so an edit takes effect at once and
// `npm install && npm start` needs no separate build step. KEEL_FROM_SOURCE=1 forces the sources.
import { readFileSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const repoDir = fileURLToPath(new URL('..', import.meta.url));

function bundleIsFresh() {
  if (process.env.KEEL_FROM_SOURCE === '1') return false;
  try {
    const { builtAtMs, inputs } = JSON.parse(readFileSync(`${repoDir}dist/inputs.json`, 'utf8'));
    return inputs.length > 0 && inputs.every((input) => statSync(`${repoDir}${input}`).mtimeMs < builtAtMs);
  } catch {
    return false; // no bundle, or a source it was built from is gone
  }
}

// `keel --version` says which one runs; child processes decide for themselves and overwrite it.
if (bundleIsFresh()) {
  process.env.KEEL_RUNS_FROM = 'bundle';
  process.setSourceMapsEnabled(true); // stack traces name the TypeScript files and lines
  await import('../dist/main.js');
} else {
  process.env.KEEL_RUNS_FROM = 'source';
  const { register } = await import('tsx/esm/api');
  register();
  await import('../cli/main.ts');
}
