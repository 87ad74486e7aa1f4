export * from './config.js';
export * from './agent.js';
export * from './connector.js';
export * from './backoff.js';
export * from './handlers.js';
export * from './http-handler.js';
export * from './discovery.js';
export * from './join.js';
