/**
 * The backend's code for the commands that use it (`keel up`, `keel backend ...`). Loaded on use, not
 * imported at the top: cli/main.ts registers every command in every keel process (an edge too), and the
 * backend's code brings the S3 client, about 23 MB of RSS.
 */
export type BackendConfigModule = typeof import('../backend/backend-config.ts');

export function loadBackendConfig(): Promise<BackendConfigModule> {
  return import('../backend/backend-config.ts');
}
