import { TinyServeError } from '@tinyserve/core';
import { GENERATE_HELP, generateCommand } from './generate-command.js';
import { SERVE_HELP, serveCommand } from './serve-command.js';
import { BENCH_HELP, benchCommand } from './bench-command.js';
import { EVAL_HELP, evalCommand } from './eval-command.js';
import type { CommandIo } from './io.js';

type Command = (argv: string[], io: CommandIo) => Promise<number>;

const COMMANDS: Record<string, { run: Command; help: string }> = {
  generate: { run: generateCommand, help: GENERATE_HELP },
  serve: { run: serveCommand, help: SERVE_HELP },
  bench: { run: benchCommand, help: BENCH_HELP },
  eval: { run: evalCommand, help: EVAL_HELP },
};

/** The top-level help, listing each command with the first line of its own help. */
export function mainHelp(): string {
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(10)}  ${c.help.split('\n')[0].replace(/^tinyserve \S+: /, '')}`);
  return `tinyserve: serve tiny language models with query-aware KV-cache selection

Usage: tinyserve <command> [options]

Commands:
${lines.join('\n')}

Run 'tinyserve <command> --help' for a command's options.`;
}

/** Runs the CLI; returns the exit code. Errors are printed, never thrown. */
export async function runCli(argv: string[], io: CommandIo): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    io.stdout(mainHelp() + '\n');
    return name === undefined ? 2 : 0;
  }
  const command = COMMANDS[name];
  if (!command) {
    io.stderr(`error: unknown command '${name}' (commands: ${Object.keys(COMMANDS).join(', ')})\n`);
    return 2;
  }
  try {
    return await command.run(rest, io);
  } catch (error) {
    if (error instanceof TinyServeError) {
      io.stderr(`error [${error.code}]: ${error.message}\n`);
      return 1;
    }
    if (error instanceof Error && 'code' in error && String((error as { code: unknown }).code).startsWith('ERR_PARSE_ARGS')) {
      io.stderr(`error: ${error.message} (see tinyserve ${name} --help)\n`);
      return 2;
    }
    io.stderr(`error: ${error instanceof Error ? error.message : String(error)}\n`);
    return 1;
  }
}
