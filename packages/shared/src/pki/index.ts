export * from './issue.js';
export * from './identity.js';
export * from './files.js';
