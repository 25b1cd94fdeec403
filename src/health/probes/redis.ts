/**
 * `type: redis` — asks the server which role it has.
 *
 *   1. AUTH (when `health.redis.password_file` is set; with `user` as ACL user since Redis 6);
 *   2. ROLE → "master" is primary, "slave" is replica ("sentinel" is neither: a failure);
 *   3. if ROLE is refused (renamed command, an ACL without it), INFO replication's `role:` line.
 *
 * The role filter (`health.role`) then decides. With role: any a plain PING-like answer is enough.
 * `health.redis.tls` (require, verify-full with ca_file) speaks TLS to the server (its tls-port).
 */
import { excerpt, ProbeFailure, ProbeSocket, readSecret, roleResult, runProbe, tlsOptions, type Probe, type Role } from './probe.ts';
import { lagResult, redisLag } from './lag.ts';
import { encodeCommand, parseReply, RespError, type RespValue } from './resp.ts';

function roleName(raw: string): Role | undefined {
  if (raw === 'master') return 'primary';
  if (raw === 'slave' || raw === 'replica') return 'replica';
  return undefined;
}

export const redisProbe: Probe = (target, settings, signal) =>
  runProbe(signal, settings, async (stage) => {
    const auth = settings.redis;
    const password = auth?.password_file ? await readSecret(auth.password_file, 'health.redis.password_file') : undefined;
    const sock = await ProbeSocket.connect(target, signal, await tlsOptions(auth, 'health.redis'));
    const command = async (args: string[]): Promise<RespValue> => {
      sock.write(encodeCommand(args));
      return sock.read((buf) => parseReply(buf));
    };
    stage.socket = sock;
    const infoReplication = async (refused: string): Promise<string> => {
      stage.name = 'waiting for INFO reply';
      const info = await command(['INFO', 'replication']);
      if (info instanceof RespError) throw new ProbeFailure(`${refused}${info.message}`);
      if (typeof info !== 'string') throw new ProbeFailure(`bad reply to INFO: ${excerpt(JSON.stringify(info))}`);
      return info;
    };
    try {
      if (password !== undefined) {
        stage.name = 'waiting for AUTH reply';
        const r = await command(auth?.user ? ['AUTH', auth.user, password] : ['AUTH', password]);
        if (r instanceof RespError) throw new ProbeFailure(`auth failed: ${r.message}`);
      }
      stage.name = 'waiting for ROLE reply';
      const role = await command(['ROLE']);
      let name: Role | undefined;
      let info: string | undefined;
      if (Array.isArray(role) && typeof role[0] === 'string') {
        name = roleName(role[0]);
        if (!name) throw new ProbeFailure(`server is a ${role[0]}, not a primary or replica`);
      } else {
        if (role instanceof RespError && /^NOAUTH/.test(role.message)) throw new ProbeFailure(`auth failed: ${role.message}`);
        if (!(role instanceof RespError)) throw new ProbeFailure(`bad reply to ROLE: ${excerpt(JSON.stringify(role))}`);
        // ROLE refused: fall back to INFO replication.
        info = await infoReplication(`ROLE and INFO refused: ${role.message}; `);
        const m = /^role:(\w+)/m.exec(info);
        name = m ? roleName(m[1]) : undefined;
        if (!name) throw new ProbeFailure(`bad reply to INFO: no role line in ${excerpt(info)}`);
      }
      // A replica of a check with max_lag: how stale it may be (src/health/probes/lag.ts).
      if (name === 'replica' && settings.max_lag !== undefined && settings.role !== 'primary') {
        const { lag_ms, why } = redisLag(info ?? await infoReplication('INFO refused: '));
        return lagResult(settings.role, settings.max_lag, lag_ms, why);
      }
      return roleResult(name, settings.role);
    } finally {
      sock.destroy();
    }
  });
