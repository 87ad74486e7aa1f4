import type { Logger } from '@kubetunnel/shared';
import type { TokenIndex } from './auth.js';
import type { DialDeps } from './dial.js';

/**
 * What every client frontend is built with (CONNECT, L7, the Konnectivity
 * ProxyService): the dial's parts, the tokens callers authenticate with, the
 * cluster domain routing reads host names with, and a log.
 */
export interface FrontendDeps extends DialDeps {
  tokens: TokenIndex;
  clusterDomain?: string;
  log: Logger;
}
