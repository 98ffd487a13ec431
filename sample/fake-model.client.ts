import { Injectable } from '@nestjs/common';

export class RateLimitedError extends Error {
  constructor(readonly retryAfterMs: number) {
    super(`429 Too Many Requests (retry after ${retryAfterMs} ms)`);
    this.name = 'RateLimitedError';
  }
}

export interface CompletionRequest {
  prompt: string;
  signal: AbortSignal;
  /** Simulates the provider throttling this call. */
  rateLimited?: boolean;
}

/**
 * Stands in for an LLM SDK so the sample runs without keys or network. Like a real
 * client it takes an AbortSignal: a cancelled run must stop paying for tokens at once,
 * not when the call would have finished.
 */
@Injectable()
export class FakeModelClient {
  // Raise it (e.g. 20000) to have time to try DELETE or Ctrl+C in the middle of a step.
  private readonly latencyMs = Number(process.env.FAKE_MODEL_LATENCY_MS ?? 400);

  complete({ prompt, signal, rateLimited }: CompletionRequest): Promise<string> {
    return new Promise((resolve, reject) => {
      if (signal.aborted) return reject(signal.reason);
      const onAbort = () => {
        clearTimeout(timer);
        reject(signal.reason);
      };
      const timer = setTimeout(() => {
        signal.removeEventListener('abort', onAbort);
        if (rateLimited) reject(new RateLimitedError(1000));
        else resolve(`(simulated completion) ${prompt}`);
      }, this.latencyMs);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }
}
