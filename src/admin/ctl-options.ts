/**
 * The options of `fulcrum ctl` and `fulcrum status`, in their own dependency-free module so that
 * src/cli.ts can declare them without loading the client.
 */
export const CTL_OPTIONS = {
  admin: { type: 'string' },
  'token-file': { type: 'string' },
  config: { type: 'string', short: 'c' },
  weight: { type: 'string' },
  'max-connections': { type: 'string' },
  backup: { type: 'boolean' },
  force: { type: 'boolean' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

export interface CtlValues {
  admin?: string;
  'token-file'?: string;
  config?: string;
  weight?: string;
  'max-connections'?: string;
  backup?: boolean;
  force?: boolean;
  json?: boolean;
  help?: boolean;
}
