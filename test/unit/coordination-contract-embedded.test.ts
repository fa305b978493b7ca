import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { EmbeddedCoordination } from '../../shared/coordination-embedded.ts';
import { coordinationContract, coordinationStore } from '../helpers/coordination-contract.ts';

coordinationContract('embedded (coordination.json under a data directory)', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'keel-coord-'));
  return coordinationStore(
    () => EmbeddedCoordination.open(dir),
    () => rm(dir, { recursive: true, force: true }),
  );
});
