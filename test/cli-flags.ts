/**
 * The kubetunnel command line as the CLI itself defines it: for checking
 * that packaging files (docker-compose.yml, deploy/) name only real
 * subcommands and flags.
 */
import { cli } from './harness.js';

const helpCache = new Map<string, Promise<Set<string>>>();

/**
 * The flags of a (sub)command, from its --help: only the option lines
 * (`  -h, --help`, `  --cert <file>`), not flags named in descriptions.
 * An unknown subcommand rejects (the CLI exits non-zero).
 */
export function flagsOf(...command: string[]): Promise<Set<string>> {
  const key = command.join(' ');
  if (!helpCache.has(key))
    helpCache.set(
      key,
      cli(...command, '--help').then((help) => {
        // Commander answers --help of an unknown subcommand with its parent's help.
        if (!help.startsWith(`Usage: kubetunnel ${key} `)) throw new Error(`unknown command: kubetunnel ${key}`);
        return new Set([...help.matchAll(/^ {2}(?:-[A-Za-z], )?--([a-z][a-z0-9-]*)/gm)].map((m) => m[1]!));
      }),
    );
  return helpCache.get(key)!;
}

/** Subcommands that have subcommands of their own (`certs init`). */
const GROUPS = new Set(['certs']);

/** Splits a kubetunnel argument list into its command words and the rest. */
export function commandOf(args: string[]): { command: string[]; rest: string[] } {
  const n = GROUPS.has(args[0]!) ? 2 : 1;
  return { command: args.slice(0, n), rest: args.slice(n) };
}

/**
 * The problems of one kubetunnel argument list: an unknown subcommand, or a
 * flag (`--name` or `--name=value`) the subcommand does not define. Empty
 * when every word is the CLI's.
 */
export async function argProblems(args: string[]): Promise<string[]> {
  const { command, rest } = commandOf(args);
  let flags: Set<string>;
  try {
    flags = await flagsOf(...command);
  } catch {
    return [`unknown command: kubetunnel ${command.join(' ')}`];
  }
  const problems: string[] = [];
  for (const a of rest) {
    const m = /^--([A-Za-z0-9-]+)(=|$)/.exec(a);
    if (m && !flags.has(m[1]!)) problems.push(`kubetunnel ${command.join(' ')}: unknown flag --${m[1]}`);
  }
  return problems;
}

/** The flag a KUBETUNNEL_* environment variable sets (KUBETUNNEL_PROXY_PORT: proxy-port), or undefined. */
export function flagOfEnv(name: string): string | undefined {
  const m = /^KUBETUNNEL_([A-Z0-9_]+)$/.exec(name);
  return m ? m[1]!.toLowerCase().replace(/_/g, '-') : undefined;
}
