import { KeelError } from '../shared/errors.ts';

export function parsePort(text: string): number {
  const port = Number(text);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw KeelError.badArgument(`'${text}' is not a TCP port (0-65535)`);
  return port;
}
