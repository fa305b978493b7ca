/**
 * bin/keel.js runs the esbuild bundle in dist/ (scripts/build.mjs) while the sources it was built from are
 * unchanged (their digest), and the TypeScript sources otherwise, so an edit is never shadowed by a stale bundle.
 * (The rest of the integration suite runs whichever is current: in CI, where `npm ci` builds it, the bundle.)
 */
import { readFileSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, runKeel } from '../helpers/processes.ts';
import { sourcesDigest } from '../../bin/sources-digest.js';

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

  it('records every source it bundled, and runs the bundle while they are unchanged', async () => {
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

  it('runs the sources when the digest does not match the sources, and when KEEL_FROM_SOURCE=1', async () => {
    const inputsFile = path.join(repoDir, 'dist', 'inputs.json');
    const recorded = readFileSync(inputsFile, 'utf8');
    try {
      writeFileSync(inputsFile, JSON.stringify({ ...JSON.parse(recorded), digest: '0'.repeat(64) }));
      expect((await runKeel(['--version'])).stdout).toContain('the TypeScript sources');
    } finally {
      writeFileSync(inputsFile, recorded);
    }
    expect((await runKeel(['--version'])).stdout).toContain('the bundle in dist/');
    const forced = await run(process.execPath, [path.join(repoDir, 'bin', 'keel.js'), '--version'], { env: { ...process.env, KEEL_FROM_SOURCE: '1' } });
    expect(forced.stdout).toContain('the TypeScript sources');
  });

  it('notices a changed source even when its modification time was kept (rsync -a, cp -p)', () => {
    const source = path.join(dataDir, 'a.ts');
    writeFileSync(source, 'export const a = 1;\n');
    const before = sourcesDigest(dataDir, ['a.ts']);
    const { atime, mtime } = statSync(source);
    writeFileSync(source, 'export const a = 2;\n');
    utimesSync(source, atime, mtime);
    expect(sourcesDigest(dataDir, ['a.ts'])).not.toBe(before);
    expect(() => sourcesDigest(dataDir, ['gone.ts'])).toThrow(/ENOENT/);
  });
});
