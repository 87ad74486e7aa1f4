import fs from 'node:fs';
import { parse as parseYaml } from 'yaml';

/**
 * Layered settings: a flag on the command line wins over a KUBETUNNEL_*
 * environment variable, which wins over the YAML config file, which wins over
 * the default. Names are the flag names (kebab-case); the file may use
 * kebab-case or camelCase keys; the variable for --proxy-port is
 * KUBETUNNEL_PROXY_PORT.
 */
export class Settings {
  private readonly fromFile: Record<string, unknown>;

  constructor(
    private readonly flags: Record<string, unknown>,
    /** Flags the user typed (commander reports defaults as set too, so we track sources). */
    private readonly fromCli: (name: string) => boolean,
    private readonly env: NodeJS.ProcessEnv,
    configPath: string | undefined,
  ) {
    this.fromFile = configPath ? loadConfigFile(configPath) : {};
  }

  private raw(name: string): unknown {
    if (this.fromCli(name)) return this.flags[camel(name)];
    const envName = `KUBETUNNEL_${name.replace(/-/g, '_').toUpperCase()}`;
    if (this.env[envName] !== undefined && this.env[envName] !== '') return this.env[envName];
    if (name in this.fromFile) return this.fromFile[name];
    if (camel(name) in this.fromFile) return this.fromFile[camel(name)];
    return this.flags[camel(name)];
  }

  string(name: string): string | undefined {
    const v = this.raw(name);
    if (v === undefined || v === null) return undefined;
    if (typeof v === 'string' || typeof v === 'number') return String(v);
    throw new SettingError(name, 'want a string');
  }

  require(name: string): string {
    const v = this.string(name);
    if (v === undefined || v === '') throw new SettingError(name, 'is required');
    return v;
  }

  list(name: string): string[] {
    const v = this.raw(name);
    if (v === undefined || v === null) return [];
    if (Array.isArray(v)) return v.map(String);
    // From the environment: comma-separated.
    return String(v).split(',').map((s) => s.trim()).filter(Boolean);
  }

  port(name: string): number {
    const s = this.require(name);
    const n = Number(s);
    if (!Number.isInteger(n) || n < 0 || n > 65535) throw new SettingError(name, `want a port from 0 to 65535, got ${JSON.stringify(s)}`);
    return n;
  }

  /** A port that is off unless set. */
  optionalPort(name: string): number | undefined {
    const v = this.string(name);
    return v === undefined || v === '' ? undefined : this.port(name);
  }

  int(name: string, min: number, max: number): number {
    const s = this.require(name);
    const n = Number(s);
    if (!Number.isInteger(n) || n < min || n > max) throw new SettingError(name, `want a whole number from ${min} to ${max}, got ${JSON.stringify(s)}`);
    return n;
  }

  duration(name: string): number {
    const s = this.require(name);
    const ms = parseDuration(s);
    if (ms === undefined) throw new SettingError(name, `want a duration such as 500ms, 30s or 2m, got ${JSON.stringify(s)}`);
    return ms;
  }

  /** One of `choices` (commander checks a flag's value; this checks the variable's and the file's too). */
  choice<T extends string>(name: string, choices: readonly T[]): T {
    const v = this.require(name);
    if (!(choices as readonly string[]).includes(v)) throw new SettingError(name, `want one of ${choices.join(', ')}, got ${JSON.stringify(v)}`);
    return v as T;
  }

  /** A duration that bounds something: above 0 and at most `maxMs`. */
  timeout(name: string, maxMs = 3_600_000): number {
    const ms = this.duration(name);
    if (ms <= 0 || ms > maxMs) throw new SettingError(name, `want a duration above 0 and at most ${maxMs / 1000}s, got ${ms} ms`);
    return ms;
  }

  /** Reads a file named by a setting; the error names the flag. */
  file(name: string): string | undefined {
    const path = this.string(name);
    if (path === undefined || path === '') return undefined;
    try {
      return fs.readFileSync(path, 'utf8');
    } catch (err) {
      throw new SettingError(name, `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
  }

  requireFile(name: string): string {
    const v = this.file(name);
    if (v === undefined) throw new SettingError(name, 'is required');
    return v;
  }
}

export class SettingError extends Error {
  constructor(flag: string, problem: string) {
    super(`--${flag}: ${problem}`);
  }
}

function camel(name: string): string {
  return name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

function loadConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(path, 'utf8');
  } catch (err) {
    throw new SettingError('config', `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  const doc: unknown = parseYaml(text);
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new SettingError('config', `${path} is not a YAML mapping`);
  return doc as Record<string, unknown>;
}

/** "250ms", "30s", "2m", "1h", or a bare number of seconds. */
export function parseDuration(s: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(s.trim());
  if (!m) return undefined;
  const n = Number(m[1]);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'];
  return Math.round(n * unit);
}
