/** crypt as a library: the pieces an embedding program or a test needs, one import away. */
export { FernetKey, decrypt, tokenLength } from './crypto/fernet.js';
export { FrameDecoder, encodeRequest } from './wire/frames.js';
export { ReplyDecoder, encodeError, encodeResult } from './wire/replies.js';
export { CryptError, ERRORS } from './core/errors.js';
export type { ErrorCode } from './core/errors.js';
export { OPERATIONS, operation } from './core/operations.js';
export type { Operation } from './core/operations.js';
export { Dispatcher } from './core/dispatcher.js';
export type { DispatchRecord, Observer } from './core/dispatcher.js';
export { CryptService } from './core/service.js';
export { AccessTokens, Policy } from './core/access.js';
export { Keyring, KeySet } from './keys/keyring.js';
export type { KeyStore } from './keys/store.js';
export { FileStore } from './keys/store.js';
export { CryptClient, ConnectionError, ProtocolError, ServerError } from './client/client.js';
export { startServer } from './ops/startup.js';
export type { RunningServer } from './ops/startup.js';
export { serverConfig, clientConfig } from './ops/config.js';
