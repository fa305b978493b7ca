/**
 * bin/keel.js runs the esbuild bundle in dist/ (scripts/build.mjs) while it is newer than every source it
 * was built from, and the TypeScript sources otherwise, so an edit is never shadowed by a stale bundle.
 * (The rest of the integration suite runs whichever is current: in CI, where `npm ci` builds it, the bundle.)
 */
import { readFileSync, statSync, utimesSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, runKeel } from '../helpers/processes.ts';

const repoDir = fileURLToPath(new URL('../..', import.meta.url));

describe('bin/keel.js: the bundle or the sources', () => {
  let dataDir: string;

  beforeAll(async () => {
    dataDir = await mkdtemp(path.join(os.tmpdir(), 'keel-bundle-'));
    const built = await run(process.execPath, [path.join(repoDir, 'scripts', 'build.mjs')]);
    expect(built.code, built.stderr).toBe(0);
  });

  afterAll(async () => {
    await rm(dataDir, { recursive: true, force: true });
  });

  it('records every source it bundled, and runs the bundle while none is newer', async () => {
    const { inputs } = JSON.parse(readFileSync(path.join(repoDir, 'dist', 'inputs.json'), 'utf8')) as { inputs: string[] };
    expect(inputs).toEqual(expect.arrayContaining(['cli/main.ts', 'edge/main.ts', 'router/main.ts', 'backend/object-store.ts']));
    expect(inputs.every((input) => !input.startsWith('node_modules/'))).toBe(true);

    const version = await runKeel(['--version']);
    expect(version.stdout).toContain('the bundle in dist/');
    const created = await runKeel(['volume', 'create', 'bundled', '2G', '--data', dataDir]);
    expect(created.code, created.stderr).toBe(0);
    const listed = await runKeel(['volume', 'list', '--data', dataDir]);
    expect(listed.stdout).toMatch(/bundled/);
  });

  it('runs the sources once a source file is newer than the bundle, and when KEEL_FROM_SOURCE=1', async () => {
    const source = path.join(repoDir, 'cli', 'main.ts');
    const { atime, mtime } = statSync(source);
    try {
      utimesSync(source, atime, new Date(Date.now() + 60_000));
      expect((await runKeel(['--version'])).stdout).toContain('the TypeScript sources');
    } finally {
      utimesSync(source, atime, mtime);
    }
    expect((await runKeel(['--version'])).stdout).toContain('the bundle in dist/');
    const forced = await run(process.execPath, [path.join(repoDir, 'bin', 'keel.js'), '--version'], { env: { ...process.env, KEEL_FROM_SOURCE: '1' } });
    expect(forced.stdout).toContain('the TypeScript sources');
  });
});
