import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DirectoryAsd } from '../../backend/asd-directory.ts';
import { defineBackendSuite } from '../helpers/backend-suite.ts';

defineBackendSuite('local-directory ASDs', async () => {
  const root = await mkdtemp(path.join(os.tmpdir(), 'keel-asd-'));
  return {
    asds: Array.from({ length: 6 }, (_, i) => new DirectoryAsd(`dir${i}`, path.join(root, `asd${i}`))),
    cleanup: () => rm(root, { recursive: true, force: true }),
  };
});
