import type { RunRow } from './storage/storage.types.js';

/** Most run ids one statement looks up. */
const MAX_IDS = 500;

interface Waiting {
  resolve(row: RunRow | null): void;
  reject(err: unknown): void;
}

/**
 * Coalesces the polls of many waiters into few statements: run lookups asked for while
 * one statement is out, or in the same turn of the event loop, share the next one. With
 * 1,000 waitForOutcome calls polling every 50 ms, that is a statement per poll tick, not
 * 20,000 per second on the pool that claims and settles.
 */
export class RunLookups {
  private readonly asked = new Map<string, Waiting[]>();
  private busy = false;
  private scheduled = false;

  constructor(private readonly read: (runIds: string[]) => Promise<RunRow[]>) {}

  get(runId: string): Promise<RunRow | null> {
    return new Promise((resolve, reject) => {
      const list = this.asked.get(runId);
      if (list) list.push({ resolve, reject });
      else this.asked.set(runId, [{ resolve, reject }]);
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.busy || this.scheduled || this.asked.size === 0) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      void this.flush();
    });
  }

  private async flush(): Promise<void> {
    this.busy = true;
    const batch = new Map<string, Waiting[]>();
    for (const [id, list] of this.asked) {
      if (batch.size >= MAX_IDS) break;
      batch.set(id, list);
      this.asked.delete(id);
    }
    try {
      const rows = await this.read([...batch.keys()]);
      const byId = new Map(rows.map((r) => [r.id, r]));
      for (const [id, list] of batch) for (const w of list) w.resolve(byId.get(id) ?? null);
    } catch (err) {
      for (const list of batch.values()) for (const w of list) w.reject(err);
    } finally {
      this.busy = false;
      this.schedule();
    }
  }
}
