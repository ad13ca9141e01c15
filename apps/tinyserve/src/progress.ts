import { ConfigError } from '@tinyserve/core';
import type { DownloadProgressEvent, ResolveModelOptions } from '@tinyserve/core';
import { processIo } from './io.js';
import type { CommandIo } from './io.js';

/**
 * Where progress goes: always stderr, so stdout (and `--json` output) stays clean. A TTY gets
 * one bar redrawn in place; anything else (a pipe, a log file, CI) gets occasional plain lines.
 */
export interface ProgressWriter {
  write(text: string): void;
  isTTY: boolean;
  /** Terminal width (default 80). */
  columns?: number;
}

/** The command's stderr as a progress writer; a TTY only when it really is the process's terminal. */
export function stderrWriter(io: CommandIo): ProgressWriter {
  const tty = io === processIo && Boolean(process.stderr.isTTY);
  return { write: (text) => io.stderr(text), isTTY: tty, columns: tty ? process.stderr.columns : undefined };
}

export interface ProgressBarOptions {
  label: string;
  /** Unknown (an indeterminate task): only the elapsed time is shown. */
  total?: number;
  unit?: 'bytes' | 'items';
  /** What a non-TTY gets: occasional lines and a closing line (default), or nothing. */
  plain?: 'lines' | 'silent';
  /** Least time between two plain lines; the first comes only after this long (default 5000). */
  plainIntervalMs?: number;
  /** Least time between two TTY redraws (default 100). */
  redrawIntervalMs?: number;
  /** Clock in milliseconds (tests pass a fake one). */
  now?: () => number;
}

const CLEAR_LINE = '\r\x1b[K';

export function formatBytes(bytes: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

/** `50.0 kB/100.0 kB` → `50.0/100.0 kB`: a TTY line has little room. */
function bytesOf(current: number, total: number): string {
  const [a, unitA] = formatBytes(current).split(' ');
  const [b, unitB] = formatBytes(total).split(' ');
  return unitA === unitB ? `${a}/${b} ${unitB}` : `${a} ${unitA}/${b} ${unitB}`;
}

export function formatDuration(ms: number): string {
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  return `${m}m${String(Math.round(s - m * 60)).padStart(2, '0')}s`;
}

/** One progress bar on one line. Draws nothing until the first `update`. */
export class ProgressBar {
  private readonly start: number;
  private readonly now: () => number;
  private current = 0;
  private detail = '';
  private lastDraw = -Infinity;
  private lastPlain: number;
  private drawn = false;
  private finished = false;

  constructor(
    private readonly writer: ProgressWriter,
    private readonly options: ProgressBarOptions,
  ) {
    this.now = options.now ?? Date.now;
    this.start = this.now();
    this.lastPlain = this.start;
  }

  /** Sets the progress (and an optional short note, e.g. which benchmark level runs). */
  update(current: number, detail?: string): void {
    if (this.finished) return;
    this.current = current;
    if (detail !== undefined) this.detail = detail;
    const t = this.now();
    if (this.writer.isTTY) {
      const complete = this.options.total !== undefined && current >= this.options.total;
      if (t - this.lastDraw < (this.options.redrawIntervalMs ?? 100) && !complete && detail === undefined) return;
      this.lastDraw = t;
      this.drawn = true;
      this.writer.write(CLEAR_LINE + this.fit(this.barLine(t)));
    } else if (this.options.plain !== 'silent' && t - this.lastPlain >= (this.options.plainIntervalMs ?? 5000)) {
      this.lastPlain = t;
      this.writer.write(`${this.options.label}: ${this.amount()}${this.note()}\n`);
    }
  }

  /** Ends the bar with a closing line: `summary`, or the amount and the time taken. */
  done(summary?: string): void {
    if (this.finished) return;
    this.finished = true;
    const line = `${this.options.label}: ${summary ?? `${this.amount()} in ${formatDuration(this.now() - this.start)}`}`;
    if (this.writer.isTTY) this.writer.write(CLEAR_LINE + this.fit(line) + '\n');
    else if (this.options.plain !== 'silent') this.writer.write(line + '\n');
  }

  /** Writes other text (a log line) without tearing the bar: a TTY's bar is erased, then redrawn below it. */
  interject(text: string): void {
    if (!this.writer.isTTY || !this.drawn || this.finished) {
      this.writer.write(text);
      return;
    }
    this.writer.write(CLEAR_LINE + text + this.fit(this.barLine(this.now())));
  }

  /** Ends the bar leaving no line behind (a TTY's bar is erased). */
  clear(): void {
    if (this.finished) return;
    this.finished = true;
    if (this.writer.isTTY && this.drawn) this.writer.write(CLEAR_LINE);
  }

  private note(): string {
    return this.detail ? `, ${this.detail}` : '';
  }

  private amount(): string {
    const { total, unit } = this.options;
    const fmt = (n: number): string => (unit === 'bytes' ? formatBytes(n) : String(n));
    if (total === undefined) return unit === 'bytes' ? fmt(this.current) : formatDuration(this.now() - this.start);
    if (unit !== 'bytes') return `${this.current}/${total}`;
    if (this.current >= total) return fmt(total);
    const pct = Math.floor((this.current / total) * 100);
    return `${pct}% (${fmt(this.current)} of ${fmt(total)})`;
  }

  private barLine(t: number): string {
    const { total, unit, label } = this.options;
    const elapsed = t - this.start;
    if (total === undefined) return `${label} … ${formatDuration(elapsed)}${this.detail ? `  ${this.detail}` : ''}`;
    const fraction = total > 0 ? Math.min(1, this.current / total) : 1;
    const pct = `${String(Math.floor(fraction * 100)).padStart(3)}%`;
    const amount = unit === 'bytes' ? bytesOf(this.current, total) : `${this.current}/${total}`;
    let tail = '';
    if (unit === 'bytes' && elapsed > 0 && this.current > 0) {
      const rate = this.current / (elapsed / 1000);
      tail = ` ${formatBytes(rate)}/s`;
      if (fraction < 1) tail += ` eta ${formatDuration(((total - this.current) / rate) * 1000)}`;
    } else if (unit !== 'bytes') {
      tail = ` ${formatDuration(elapsed)}`;
    }
    const text = `${pct} ${amount}${tail}${this.detail ? `  ${this.detail}` : ''}`;
    // A width fixed by the label alone, so the bar does not jitter as the numbers change;
    // 45 columns leave room for '100% 999.9 MB/999.9 MB 99.9 MB/s eta 59m59s'.
    const width = Math.max(8, Math.min(30, (this.writer.columns ?? 80) - label.length - 4 - 45));
    const filled = Math.round(fraction * width);
    return `${label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${text}`;
  }

  /** Keeps a TTY line within the terminal, so `\r` redraws the same line. */
  private fit(line: string): string {
    const max = (this.writer.columns ?? 80) - 1;
    return line.length <= max ? line : line.slice(0, Math.max(0, max - 1)) + '…';
  }
}

export function createProgressBar(writer: ProgressWriter, options: ProgressBarOptions): ProgressBar {
  return new ProgressBar(writer, options);
}

/** A download progress callback drawing one bar per file, as `resolveModel` reports them. */
export function downloadProgress(writer: ProgressWriter, options: { prefix?: string; now?: () => number } = {}): (event: DownloadProgressEvent) => void {
  let file: string | null = null;
  let bar: ProgressBar | null = null;
  return (event) => {
    if (event.file !== file || !bar) {
      bar?.done();
      file = event.file;
      bar = createProgressBar(writer, { label: `${options.prefix ?? 'downloading'} ${event.file}`, total: event.totalBytes, unit: 'bytes', now: options.now });
    }
    bar.update(event.loadedBytes);
    if (event.loadedBytes >= event.totalBytes) {
      bar.done();
      bar = null;
    }
  };
}

const TRUE = /^(1|true|yes|on)$/i;
const FALSE = /^(0|false|no|off|)$/i;

/** `--allow-download`, else TINYSERVE_ALLOW_DOWNLOAD (1/true/yes/on or 0/false/no/off). */
export function allowDownloadFrom(flag: boolean, env: NodeJS.ProcessEnv): boolean {
  if (flag) return true;
  const raw = env.TINYSERVE_ALLOW_DOWNLOAD;
  if (raw === undefined || FALSE.test(raw.trim())) return false;
  if (TRUE.test(raw.trim())) return true;
  throw new ConfigError('allowDownload', `TINYSERVE_ALLOW_DOWNLOAD: expected true or false, got '${raw}'`);
}

export interface ModelLoadingProgress {
  /** Options for `TinyServe.loadModel`: downloads allowed or not, their progress, the command's environment. */
  options: ResolveModelOptions;
  /** Runs the load with a transient "loading <model>" line on a TTY, erased when it settles. */
  run<T>(load: () => Promise<T>): Promise<T>;
  /** Writes a log line (stderr) without tearing the loading line. */
  log(text: string): void;
}

/**
 * Progress for loading a model in a command: a transient "loading <model>" line on a TTY (nothing
 * elsewhere, so a quick local load stays silent), and a bar per file if the model downloads.
 */
export function modelLoadingProgress(io: CommandIo, model: string | undefined, allowDownload: boolean, writer: ProgressWriter = stderrWriter(io)): ModelLoadingProgress {
  const loading = createProgressBar(writer, { label: `loading ${model ?? 'the bundled model'}`, plain: 'silent' });
  return {
    options: { allowDownload, env: io.env, onProgress: downloadProgress(writer) },
    async run(load) {
      loading.update(0);
      try {
        return await load();
      } finally {
        loading.clear();
      }
    },
    log: (text) => loading.interject(text),
  };
}
