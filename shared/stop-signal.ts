/**
 * Resolves when the process should stop: SIGTERM, SIGINT, or — for a child of `keel up` (KEEL_SUPERVISED=1)
 * — its supervisor died (the child was re-parented), so that killing `keel up` with SIGKILL leaves no orphans.
 */
export function waitForStopSignal(): Promise<string> {
  return new Promise((resolve) => {
    const parentPid = process.ppid;
    const orphanCheck =
      process.env.KEEL_SUPERVISED === '1'
        ? setInterval(() => process.ppid !== parentPid && done('supervisor gone'), 1_000).unref()
        : undefined;
    const done = (reason: string) => {
      clearInterval(orphanCheck);
      resolve(reason);
    };
    process.once('SIGTERM', () => done('SIGTERM'));
    process.once('SIGINT', () => done('SIGINT'));
  });
}
