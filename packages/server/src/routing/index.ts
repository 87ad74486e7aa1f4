export * from './resolve.js';
export * from './target.js';
export * from './tunnels.js';
