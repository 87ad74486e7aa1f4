export * from './frame.js';
export * from './codec.js';
