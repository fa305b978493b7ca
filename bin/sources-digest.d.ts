/** SHA-256 over each source's path and content, in the order given; throws when a source cannot be read. */
export function sourcesDigest(repoDir: string, inputs: readonly string[]): string;
