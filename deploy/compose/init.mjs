/**
 * The `init` service of docker-compose.yml: makes the demo's certificates and
 * token files in a directory (the `certs` volume, which the other services
 * mount read-only), so that `docker compose up` needs nothing done on the
 * host first. The image has no shell, so this runs on the image's node:
 *
 *   node deploy/compose/init.mjs --dir /certs [--owner 65532]
 *
 * Each step is a `kubetunnel` command (steps() below; the packaging test
 * checks them against the CLI), run with this same node. A directory that
 * already holds every file is left as it is: the volume outlives `docker
 * compose down`, and the CAs in it are what kubeconfigs trust. --owner hands
 * the files to the user the other services run as (the volume starts out
 * root's), all but the CA keys: no service needs one, as on a real hub.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const CLI = fileURLToPath(new URL('../../packages/cli/bin/kubetunnel.js', import.meta.url));
export const MEMBERS = ['member-1', 'member-2'];

/** The demo's tokens: the hub's (tokens.csv) and the member apiservers' (member-tokens.csv), never the same. */
export const TOKEN_FILES = {
  'tokens.csv': 'demo-admin-token,admin,1,"system:masters"\n',
  'member-tokens.csv': 'demo-member-admin-token,admin,1,"system:masters"\n',
};

/** The kubetunnel commands that make the certificates in `dir`, in order. */
export function steps(dir) {
  return [
    // Hub CA, client CA, and the server certificate for the name the agents dial (server) and 127.0.0.1/localhost.
    ['certs', 'init', `--dir=${dir}`, '--san=server'],
    ...MEMBERS.map((m) => ['certs', 'agent', `--dir=${dir}`, `--cluster=${m}`]),
    // Each stand-in member apiserver has its own CA, as real clusters do.
    ...MEMBERS.map((m) => ['certs', 'apiserver', `--dir=${path.posix.join(dir, m)}`, `--san=${m}-apiserver`]),
  ];
}

/** Every file the steps and the token files leave in `dir`. */
export function outputs(dir) {
  return [
    ...['ca.crt', 'ca.key', 'client-ca.crt', 'client-ca.key', 'server.crt', 'server.key'],
    ...MEMBERS.flatMap((m) => [`agent-${m}.crt`, `agent-${m}.key`]),
    ...MEMBERS.flatMap((m) => ['apiserver-ca.crt', 'apiserver-ca.key', 'apiserver.crt', 'apiserver.key'].map((f) => `${m}/${f}`)),
    ...Object.keys(TOKEN_FILES),
  ].map((f) => path.join(dir, f));
}

/** CA keys: they stay with the user that ran init (0600), out of the services' reach, as on a real hub. */
const CA_KEY = /^(ca|client-ca|apiserver-ca)\.key$/;

function chownTree(dir, uid) {
  fs.chownSync(dir, uid, uid);
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) chownTree(p, uid);
    else if (!CA_KEY.test(e.name)) fs.chownSync(p, uid, uid);
  }
}

export function init(dir, owner) {
  if (outputs(dir).every((f) => fs.existsSync(f))) {
    process.stdout.write(`${dir}: certificates and tokens already there, kept\n`);
  } else {
    for (const args of steps(dir)) execFileSync(process.execPath, [CLI, ...args], { stdio: 'inherit' });
    for (const [name, text] of Object.entries(TOKEN_FILES)) {
      fs.writeFileSync(path.join(dir, name), text, { mode: 0o600 });
      process.stdout.write(`wrote ${path.join(dir, name)}\n`);
    }
  }
  if (owner !== undefined) chownTree(dir, owner);
}

if (process.argv[1] && fs.realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { dir: { type: 'string' }, owner: { type: 'string' } } });
  if (!values.dir) {
    process.stderr.write('usage: node deploy/compose/init.mjs --dir DIR [--owner UID]\n');
    process.exit(2);
  }
  const owner = values.owner === undefined ? undefined : Number(values.owner);
  if (owner !== undefined && !Number.isInteger(owner)) {
    process.stderr.write(`--owner: want a numeric user id, got ${JSON.stringify(values.owner)}\n`);
    process.exit(2);
  }
  init(values.dir, owner);
}
