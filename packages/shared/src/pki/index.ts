export * from './issue.js';
export * from './identity.js';
export * from './files.js';
export * from './join-token.js';
export * from './csr.js';
