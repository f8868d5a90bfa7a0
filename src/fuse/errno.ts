import { constants } from 'node:os';

/** Linux errno values by name, as Node knows them. */
export const Errno = constants.errno as Readonly<Record<string, number>> & typeof constants.errno;

/**
 * The one error type a FileSystem method throws to answer with an errno.
 * Anything else thrown by a backend is logged and answered with EIO.
 */
export class FsError extends Error {
  readonly errno: number;
  constructor(errno: number, message?: string) {
    // Errno answers are ordinary control flow (ENOENT on every negative lookup):
    // skip the stack trace, which costs more than the rest of a request.
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(message ?? errnoName(errno));
    Error.stackTraceLimit = limit;
    this.errno = errno;
    this.name = 'FsError';
  }
}

/** Shorthand for `throw new FsError(Errno.X)`. */
export function fail(errno: number, message?: string): never {
  throw new FsError(errno, message);
}

const names = new Map<number, string>();
for (const [name, value] of Object.entries(constants.errno)) {
  if (!names.has(value)) names.set(value, name);
}

export function errnoName(errno: number): string {
  return names.get(errno) ?? `errno ${errno}`;
}

/**
 * Maps an error from Node's fs/net APIs (code 'ENOENT' etc.) to an errno.
 * Returns undefined for errors that carry no errno.
 */
export function errnoOf(err: unknown): number | undefined {
  if (err instanceof FsError) return err.errno;
  if (err && typeof err === 'object') {
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string' && code in constants.errno) {
      return (constants.errno as Record<string, number>)[code];
    }
    const n = (err as { errno?: unknown }).errno;
    if (typeof n === 'number' && n !== 0) return Math.abs(n);
  }
  return undefined;
}
