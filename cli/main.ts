/** The `keel` command line. Operating errors print one clear line and exit 1; nothing prints a stack. */
import { Command, CommanderError } from 'commander';
import { isKeelError } from '../shared/errors.ts';
import { closeCoordinations } from './data-dir.ts';
import { addBackendCommands } from './backend-commands.ts';
import { addEdgeCommand } from './edge-command.ts';
import { addSnapshotCommands } from './snapshot-commands.ts';
import { addRouterCommands } from './router-commands.ts';
import { addUpCommand } from './up-command.ts';
import { addVolumeCommands } from './volume-commands.ts';
import { addHaCommands } from './ha-commands.ts';

const program = new Command('keel')
  .description('Keel: distributed block storage — NBD edge, log-structured routers, object-store backend')
  .version(`0.1.0 (${process.env.KEEL_RUNS_FROM === 'bundle' ? 'the bundle in dist/' : 'the TypeScript sources'})`)
  .showHelpAfterError()
  .exitOverride();

addUpCommand(program);
addRouterCommands(program);
addEdgeCommand(program);
addVolumeCommands(program);
addHaCommands(program);
addSnapshotCommands(program);
addBackendCommands(program);

try {
  await program.parseAsync(process.argv);
  await closeCoordinations();
} catch (err) {
  await closeCoordinations();
  if (err instanceof CommanderError) process.exit(err.exitCode);
  if (isKeelError(err)) {
    console.error(`keel: ${err.message}`);
    process.exit(err.code === 'BAD_ARGUMENT' ? 2 : 1);
  }
  throw err;
}
