/**
 * A deterministic 32-bit string hash: FNV-1a over the string's UTF-16 code units, finished with
 * murmur3's fmix32 (FNV-1a alone mixes the last characters poorly, and client keys such as
 * "10.0.0.17" differ mostly there). Same input, same seed → same value in every process and on
 * every machine, which Maglev needs: two fulcrum instances must agree on tables and on keys.
 *
 * Allocation-free: it walks `charCodeAt`, no encoding to bytes, no intermediate strings.
 */

const FNV_OFFSET_BASIS = 0x811c9dc5;
const FNV_PRIME = 0x01000193;

/** Seeds: one per purpose, so a backend's offset and skip are independent hashes of its key. */
export const SEED_CLIENT = 0;
export const SEED_OFFSET = 0x5bd1e995;
export const SEED_SKIP = 0x27d4eb2f;

/** murmur3's 32-bit finalizer: every input bit affects every output bit. */
export function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The seeded hash of `str`, an unsigned 32-bit integer. */
export function hashString(str: string, seed: number): number {
  let h = (FNV_OFFSET_BASIS ^ seed) >>> 0;
  for (let i = 0; i < str.length; i++) {
    h ^= str.charCodeAt(i);
    h = Math.imul(h, FNV_PRIME);
  }
  return fmix32(h);
}

/**
 * Hashes a client key (the source IP, or "ip:port" with hash_key: source_ip_port) for Maglev.
 * Hot path: once per accepted connection of a maglev service.
 */
export function hashKey(key: string): number {
  return hashString(key, SEED_CLIENT);
}

/** A backend's Maglev permutation parameters from its "host:port" key (stored in B_HASH_OFFSET/SKIP). */
export function backendHashes(key: string): { offset: number; skip: number } {
  return { offset: hashString(key, SEED_OFFSET), skip: hashString(key, SEED_SKIP) };
}
