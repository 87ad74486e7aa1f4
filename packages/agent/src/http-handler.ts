import { MemberHttp, fileToken, type Logger } from '@kubetunnel/shared';

export interface ImpersonatingProxyConfig {
  apiserver: URL;
  apiserverCA?: string;
  /** The agent's own token toward its apiserver (a service-account token), re-read as it rotates. */
  tokenFile?: string;
  log: Logger;
}

/**
 * Completes L7 (`http`) streams at the agent: each request goes to the
 * apiserver with the agent's own service-account token and impersonation
 * headers for the caller named in the stream's OPEN (MemberHttp, shared with
 * the hub, which does the same for clusters served by ANP agents).
 */
export class ImpersonatingProxy extends MemberHttp {
  constructor(config: ImpersonatingProxyConfig) {
    super({
      apiserver: config.apiserver,
      ...(config.apiserverCA ? { tls: { ca: config.apiserverCA } } : {}),
      token: fileToken(config.tokenFile),
      log: config.log,
    });
  }
}
