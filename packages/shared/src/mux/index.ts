export * from './transport.js';
export * from './ws-transport.js';
export * from './stream.js';
export * from './session.js';
export * from './pending.js';
export * from './splice.js';
export * from './pool.js';
