/**
 * What every crypt-client command needs to reach the server: the connection settings (flags and
 * the environment, never `.env`), the CA and the access token read the careful way, and one way to
 * report what went wrong as an exit code.
 */
import { readFile } from 'node:fs/promises';
import { ConfigError, clientConfig } from '../ops/config.js';
import { ConnectionError, ServerError } from '../client/client.js';
import type { ClientOptions } from '../client/client.js';
import { FileError, readSecret } from '../keys/files.js';
import { EXIT, complain } from './common.js';
import type { Io } from './common.js';

/** The client's name in messages. */
export const PROGRAM = 'crypt-client';

/** The connection settings from parsed flags and the environment, or a usage exit code (said on stderr). */
export async function connectOptions(args: Record<string, unknown>, io: Io): Promise<ClientOptions | number> {
  try {
    // no .env for the client: one in a directory you happen to be in could send your token elsewhere
    const config = clientConfig({ flags: args, env: io.env, dotenv: {} });
    const ca = config.ca
      ? await readFile(config.ca).catch((err: NodeJS.ErrnoException) => {
          throw new ConfigError(`cannot read CA file ${config.ca} (--ca): ${err.code ?? 'error'}`);
        })
      : undefined;
    let token = config.token;
    if (config.tokenFile) {
      const bytes = await readSecret(config.tokenFile, 'token file', 64 * 1024);
      if (bytes === null) throw new ConfigError(`token file ${config.tokenFile} (--token-file) does not exist`);
      token = bytes.toString('utf8').trim();
      if (token === '') throw new ConfigError(`token file ${config.tokenFile} (--token-file) is empty`);
    }
    if (args.token !== undefined) complain(io, PROGRAM, 'warning: --token puts the secret in the process list, where other local users can read it; use CRYPT_TOKEN or --token-file');
    return { host: config.host, port: config.port, tls: config.tls, ca, token, timeoutMs: config.timeout * 1000 };
  } catch (err) {
    if (!(err instanceof ConfigError || err instanceof FileError)) throw err;
    complain(io, PROGRAM, err.message);
    return EXIT.usage;
  }
}

/** Says what a failed request met, and returns its exit code: 1 refused, 3 unreachable. */
export function report(io: Io, err: unknown): number {
  if (err instanceof ServerError) {
    const hint = err.code === 'unauthorized' && !/CRYPT_TOKEN/.test(err.message) ? ' (send a token with --token-file or CRYPT_TOKEN)' : '';
    complain(io, PROGRAM, `${err.code}: ${err.message}${hint}`);
    return EXIT.failed;
  }
  if (err instanceof ConnectionError) {
    complain(io, PROGRAM, err.message);
    return EXIT.unreachable;
  }
  throw err;
}
