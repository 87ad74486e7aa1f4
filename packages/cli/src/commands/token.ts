import fs from 'node:fs';
import path from 'node:path';
import { caCertHash, createJoinToken, isValidClusterName, loadClientCA } from '@kubetunnel/shared';
import { parseDuration } from '../options.js';

export interface TokenCreateFlags {
  dir: string;
  cluster: string;
  ttl: string;
  uses?: string;
  server: string;
}

/**
 * `kubetunnel token create`: a join token for one cluster, signed with the
 * client CA key in DIR, and the hub CA's public-key hash from DIR/ca.crt.
 * The output names the agent flags on one line:
 * `--join-token TOKEN --ca-cert-hash sha256:HEX`.
 */
export function createTokenCommand(o: TokenCreateFlags): { text: string; warnings: string[] } {
  if (!isValidClusterName(o.cluster)) throw new Error(`--cluster: want a DNS label (a-z, 0-9, '-'; at most 63), got ${JSON.stringify(o.cluster)}`);
  const ttlMs = parseDuration(o.ttl);
  if (ttlMs === undefined || ttlMs < 1000) throw new Error(`--ttl: want a duration of at least 1s such as 30m or 24h, got ${JSON.stringify(o.ttl)}`);
  let uses: number | undefined;
  if (o.uses !== undefined) {
    uses = Number(o.uses);
    if (!Number.isInteger(uses) || uses < 1) throw new Error(`--uses: want a whole number of at least 1, got ${JSON.stringify(o.uses)}`);
  }
  const { ca, warnings } = loadClientCA(o.dir);
  const hubCAFile = path.join(o.dir, 'ca.crt');
  let hubCA: string;
  try {
    hubCA = fs.readFileSync(hubCAFile, 'utf8');
  } catch {
    throw new Error(`no hub CA at ${hubCAFile}: run \`kubetunnel certs init --dir ${o.dir}\` first`);
  }
  const { token, claim } = createJoinToken(ca.key, { cluster: o.cluster, ttlMs, ...(uses !== undefined ? { uses } : {}) });
  const hash = caCertHash(hubCA);
  const flags = `--join-token ${token} --ca-cert-hash ${hash}`;
  const text = [
    `join token ${claim.id} for cluster ${claim.cluster}, valid until ${new Date(claim.expiresAt * 1000).toISOString()}, ` +
      `${uses === undefined ? 'for any number of agents' : `for ${uses} agent(s) per server replica`}`,
    `revoke it by adding the line "${claim.id}" to the server's --join-revocations file`,
    '',
    'agent flags:',
    flags,
    '',
    'run in the member cluster:',
    `kubetunnel agent --server ${o.server} --cluster ${claim.cluster} ${flags} --state-dir /var/lib/kubetunnel`,
    '',
  ].join('\n');
  return { text, warnings };
}
