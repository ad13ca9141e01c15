import type { ServerResponse } from 'node:http';

/** Server-sent events in OpenAI's framing: `data: <json>\n\n`, ending with `data: [DONE]\n\n`. */
export class SseWriter {
  constructor(private readonly res: ServerResponse) {}

  static open(res: ServerResponse, headers: Record<string, string>): SseWriter {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      // Reverse proxies (nginx) must not buffer the stream.
      'x-accel-buffering': 'no',
      ...headers,
    });
    res.flushHeaders();
    return new SseWriter(res);
  }

  get closed(): boolean {
    return this.res.destroyed || this.res.writableEnded;
  }

  /** Writes one event; waits while the socket's buffer is full so a slow reader slows only itself. */
  async send(data: unknown): Promise<void> {
    if (this.closed) return;
    if (this.res.write(`data: ${JSON.stringify(data)}\n\n`)) return;
    await new Promise<void>((resolve) => {
      const done = (): void => {
        this.res.off('drain', done);
        this.res.off('close', done);
        resolve();
      };
      this.res.on('drain', done);
      this.res.on('close', done);
    });
  }

  end(): void {
    if (this.closed) return;
    this.res.end('data: [DONE]\n\n');
  }
}
