/** `--name value` options of the benchmark commands. */
const args = process.argv.slice(2);

export function option(name: string, dflt: string): string {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : dflt;
}
