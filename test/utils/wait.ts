/** Promise and polling helpers; no database and no Nest, so unit specs may use them too. */
/** Polls `check` until it returns a truthy value or the deadline passes (then throws with `what`). */
export async function waitFor<T>(
  check: () => T | Promise<T>,
  what: string,
  timeoutMs = 15_000,
  everyMs = 20,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value) return value as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline)
      throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${last})` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** A promise with its resolve function, to wait on an event a runner reports. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/**
 * Asserts that `check` stays truthy for the whole window, polling it; fails as soon as
 * it turns falsy. The way to prove that something does NOT happen within a bounded time.
 */
export async function holdsFor(
  check: () => boolean | Promise<boolean>,
  ms: number,
  what: string,
  everyMs = 20,
): Promise<void> {
  const until = Date.now() + ms;
  for (;;) {
    if (!(await check())) throw new Error(`Expected to hold for ${ms} ms, but stopped holding: ${what}`);
    if (Date.now() >= until) return;
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Runs `fn` and returns the error it throws (fails the test when it does not throw). */
export async function thrownBy(fn: () => Promise<unknown>): Promise<Error> {
  try {
    await fn();
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected the call to throw, but it resolved');
}
