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

/**
 * The line logged once per closed connection when `logging.connections` is true (what HAProxy's
 * tcplog carries), by the worker that served it. Field names are part of fulcrum's interface:
 * log pipelines parse them, so they change only with a note in the README.
 */
export interface ConnectionLogLine {
  /** Client address, "ip:port". */
  client: string;
  service: string;
  /** The backend that served the session (or the last one tried), "host:port"; null when none was picked. */
  backend: string | null;
  /** Milliseconds from the first connect attempt to the backend connection being up (-1: never connected). */
  connect_ms: number;
  /** Milliseconds spent waiting in the service's queue (0 when admitted at once). */
  queue_ms: number;
  /** Milliseconds from accept to close. */
  duration_ms: number;
  /** Bytes client → backend. */
  bytes_in: number;
  /** Bytes backend → client. */
  bytes_out: number;
  /** Connect attempts redispatched to another backend for this connection. */
  retries: number;
  /** One of TERM_REASONS in src/shm/layout.ts. */
  reason: string;
  /** Why, where the reason alone does not say it (a bad PROXY header: what was wrong with it). */
  detail?: string;
  /** UDP flows only: datagrams client → backend, and backend → client. */
  datagrams_in?: number;
  datagrams_out?: number;
}

/** The `msg` of every connection line, so `jq 'select(.msg=="connection")'` finds them. */
export const CONNECTION_LOG_MSG = 'connection';

/** The `msg` of the line logged per backend state transition (fields: service, backend, from, to, cause). */
export const BACKEND_STATE_LOG_MSG = 'backend state';
/** The `msg` of the line logged per failover role change (fields: from, to, cause). */
export const ROLE_LOG_MSG = 'failover role';
