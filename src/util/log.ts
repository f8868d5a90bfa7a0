/** Structured logs (pino, JSON lines on stderr). */
import { pino, destination, type Logger } from 'pino';

export type { Logger };

export function createLogger(level: string = process.env.DPFS_LOG ?? 'info'): Logger {
  return pino(
    {
      level,
      base: { pid: process.pid },
      // bigint uniques and lock owners print as strings rather than throwing.
      hooks: {
        logMethod(args, method) {
          const fixed = args.map((a) => (a && typeof a === 'object' ? JSON.parse(JSON.stringify(a, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))) : a));
          return method.apply(this, fixed as Parameters<typeof method>);
        },
      },
    },
    destination({ dest: 2, sync: true }),
  );
}

export const silentLogger: Logger = pino({ level: 'silent' });
