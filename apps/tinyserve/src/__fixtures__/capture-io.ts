import type { CommandIo } from '../io.js';

/** A command's IO that collects stdout and stderr as strings, for tests. */
export function captureIo(env: NodeJS.ProcessEnv = {}): CommandIo & { out: string; err: string } {
  const io = {
    out: '',
    err: '',
    env,
    stdout(text: string) {
      io.out += text;
    },
    stderr(text: string) {
      io.err += text;
    },
  };
  return io;
}
