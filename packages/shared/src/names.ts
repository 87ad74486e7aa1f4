/** Whether `s` has a C0 control character (TAB, CR and LF included) or DEL. */
export function hasControlCharacter(s: string): boolean {
  return /[\u0000-\u001f\u007f]/.test(s);
}

/** A cluster name: a DNS-1123 label (lowercase a-z, 0-9 and '-', at most 63, alphanumeric at both ends). */
export function isValidClusterName(name: string): boolean {
  return name.length <= 63 && /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(name);
}
