/**
 * A throwaway CA and a server certificate for TLS tests (openssl from Debian): the server's
 * certificate names `ip` (subjectAltName IP), valid one day. Files in `dir`, the key mode 0600.
 */
import { execFile } from 'node:child_process';
import { chmod, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface TestCerts {
  caFile: string;
  certFile: string;
  keyFile: string;
  /** Another CA, which signed nothing the server holds. */
  otherCaFile: string;
}

export async function makeCerts(dir: string, ip: string): Promise<TestCerts> {
  const f = (name: string) => join(dir, name);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await run('openssl', ['req', '-x509', ...ec, '-keyout', f('ca.key'), '-out', f('ca.crt'), '-subj', '/CN=fulcrum test CA', '-days', '1']);
  await run('openssl', ['req', '-x509', ...ec, '-keyout', f('other-ca.key'), '-out', f('other-ca.crt'), '-subj', '/CN=another CA', '-days', '1']);
  await run('openssl', ['req', ...ec, '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=fulcrum test server']);
  await writeFile(f('san.ext'), `subjectAltName=IP:${ip}\n`);
  await run('openssl', ['x509', '-req', '-in', f('server.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('server.crt'), '-days', '1', '-extfile', f('san.ext')]);
  await chmod(f('server.key'), 0o600);
  return { caFile: f('ca.crt'), certFile: f('server.crt'), keyFile: f('server.key'), otherCaFile: f('other-ca.crt') };
}
