import type { ServingBackend } from './backend.js';
import type { TinyServeHttpServer } from './server.js';

export interface GracefulShutdownOptions {
  /** Default ['SIGTERM', 'SIGINT']. */
  signals?: readonly NodeJS.Signals[];
  /** How long running generations may take to finish before they are cancelled. Default 30 s. */
  timeoutMs?: number;
  /** Called with the exit code at the end (default `process.exit`). */
  exit?: (code: number) => void;
  log?: (message: string) => void;
}

export interface GracefulShutdown {
  /** Drains and closes (idempotent: a second call returns the same promise). */
  shutdown(reason?: string): Promise<void>;
  /** Removes the signal handlers. */
  uninstall(): void;
}

/**
 * On SIGTERM/SIGINT: answer new requests 503, let running generations finish
 * (`backend.drain()`, bounded by `timeoutMs`, after which they are cancelled), close the HTTP
 * server and the backend, then exit 0 (1 when the drain timed out or closing failed). A second
 * signal during the drain cancels what is still running.
 */
export function installGracefulShutdown(server: TinyServeHttpServer, backend: ServingBackend, options: GracefulShutdownOptions = {}): GracefulShutdown {
  const signals = options.signals ?? ['SIGTERM', 'SIGINT'];
  const timeoutMs = options.timeoutMs ?? 30_000;
  const exit = options.exit ?? ((code: number) => process.exit(code));
  const log = options.log ?? (() => {});
  let running: Promise<void> | null = null;

  const waitForHttp = async (): Promise<void> => {
    // The engine may be done while the last bytes of a stream are still being written.
    while (server.tinyserve.inFlight() > 0) await new Promise((r) => setTimeout(r, 10));
  };

  const shutdown = (reason = 'shutdown requested'): Promise<void> => {
    if (running) return running;
    running = (async () => {
      let code = 0;
      server.tinyserve.startDraining();
      log(`${reason}: draining ${server.tinyserve.inFlight()} running request(s)`);
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(true), timeoutMs);
      });
      const drained = Promise.all([backend.drain(), waitForHttp()]).then(() => false);
      try {
        if (await Promise.race([drained, timedOut])) {
          code = 1;
          log(`drain did not finish within ${timeoutMs} ms: cancelling ${server.tinyserve.inFlight()} request(s)`);
          server.tinyserve.abortAll();
        }
      } catch (error) {
        code = 1;
        log(`drain failed: ${(error as Error).message}`);
      } finally {
        clearTimeout(timer);
      }
      try {
        await server.close();
        await backend.close();
      } catch (error) {
        code = 1;
        log(`close failed: ${(error as Error).message}`);
      }
      uninstall();
      log('stopped');
      exit(code);
    })();
    return running;
  };

  const onSignal = (signal: NodeJS.Signals): void => {
    if (running) {
      log(`${signal} again: cancelling running requests`);
      server.tinyserve.abortAll();
      return;
    }
    void shutdown(`${signal} received`);
  };
  const uninstall = (): void => {
    for (const s of signals) process.off(s, onSignal);
  };
  for (const s of signals) process.on(s, onSignal);
  return { shutdown, uninstall };
}
