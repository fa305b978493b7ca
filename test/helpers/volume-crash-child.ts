/**
 * Child process of test/integration/volume-driver-crash.test.ts: writes the crash workload to a volume
 * in groups of concurrent writes, prints `ACK <last index>` after each group, `FLUSHED <last index>`
 * after its flush, and keeps writing until it is killed.
 * Usage: node --import tsx test/helpers/volume-crash-child.ts <dir> <writes before flush>
 */
import { crashGroupSize, crashWrite, openCrashVolume } from './crash-workload.ts';

async function main(): Promise<void> {
  const [dir, writesBeforeFlushText] = process.argv.slice(2);
  const writesBeforeFlush = Number(writesBeforeFlushText);
  const driver = await openCrashVolume(dir);
  for (let first = 0; ; first += crashGroupSize) {
    const group = [];
    for (let index = first; index < first + crashGroupSize; index++) {
      const write = crashWrite(index);
      group.push(driver.write(write.offset, write.data, false));
    }
    await Promise.all(group);
    process.stdout.write(`ACK ${first + crashGroupSize - 1}\n`);
    if (first + crashGroupSize === writesBeforeFlush) {
      await driver.flush();
      process.stdout.write(`FLUSHED ${first + crashGroupSize - 1}\n`);
    }
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`crash child failed: ${String((err as Error).stack ?? err)}\n`);
  process.exit(1);
});
