/**
 * The one place pino is configured. Components take a child logger made once, at creation
 * (`log.child({ component: 'health', service })`), never one per call or per connection.
 */
import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger } from 'pino';

export function createLogger(level: LevelWithSilent = 'info', destination?: pino.DestinationStream): Logger {
  return pino({ level, base: { app: 'fulcrum' }, timestamp: pino.stdTimeFunctions.isoTime }, destination ?? pino.destination({ sync: false }));
}

/** A logger that drops everything: for tests and tools that do not log. */
export const silentLogger: Logger = pino({ level: 'silent' });
