/**
 * SETTLEMENT_KINDS is the one table both settle paths (fast batch and careful one-by-one)
 * derive their statements from, so every entry's effects are pinned here: a change to
 * one is a change to what a crash-free settlement commits.
 */
import { JobKind, type NewJob } from '../../lib/storage/storage.types.js';
import {
  endsRun,
  kindOf,
  type JobEffect,
  type RunEffect,
  type RunEnding,
  Settle,
  type Settlement,
  SETTLEMENT_KINDS,
  type SettlementType,
} from '../../lib/storage/settlements.js';

const successor: NewJob = {
  id: 'row-1',
  queue: 'orders',
  kind: JobKind.Step,
  runId: 'run-1',
  stepNumber: 2,
  priority: 0,
  runAt: 1_000,
  scheduled: false,
  maxAttempts: 3,
  payload: '{}',
  headers: '{}',
};

interface Expected {
  settlement: Settlement;
  job: JobEffect;
  run: RunEffect;
  /** How the run ends when `run` is 'end'; undefined for the kinds that leave the run as it is. */
  ending?: RunEnding;
  deadLetter?: string;
  fast: boolean;
}

// A Record over SettlementType: a kind added to the union without a row here fails to compile.
const EXPECTED: Record<SettlementType, Expected[]> = {
  continue: [{ settlement: Settle.continueWith(successor), job: 'successor', run: 'advance', fast: true }],
  // Careful path only: the children are inserted after the run moves on.
  spawn: [
    {
      settlement: Settle.spawn({ ...successor, childrenOpen: 2 }, []),
      job: 'successor',
      run: 'advance',
      fast: false,
    },
  ],
  // Careful path only: after the run moves on it may find the signal already in the mailbox.
  wait: [
    {
      settlement: Settle.waitFor({ ...successor, waitFor: 'approval' }),
      job: 'successor',
      run: 'advance',
      fast: false,
    },
  ],
  finish: [
    {
      settlement: Settle.finish('succeeded', { result: '{"ok":true}' }),
      job: 'delete',
      run: 'end',
      ending: { status: 'succeeded', result: '{"ok":true}', error: undefined },
      fast: true,
    },
    {
      settlement: Settle.finish('failed', { error: 'card declined' }),
      job: 'delete',
      run: 'end',
      ending: { status: 'failed', result: undefined, error: 'card declined' },
      fast: true,
    },
    {
      settlement: Settle.finish('cancelled', { error: 'customer left' }),
      job: 'delete',
      run: 'end',
      ending: { status: 'cancelled', result: undefined, error: 'customer left' },
      fast: true,
    },
  ],
  deadLetter: [
    {
      settlement: Settle.deadLetter('Error: boom\n    at runStep'),
      job: 'delete',
      run: 'end',
      ending: { status: 'failed', error: 'Error: boom\n    at runStep' },
      deadLetter: 'Error: boom\n    at runStep',
      fast: false,
    },
    {
      // The run shows the short reason; the dead letter keeps the full text for whoever retries it.
      settlement: Settle.deadLetter('Error: boom\n    at runStep', 'boom (gave up after 3 of 3 attempts)'),
      job: 'delete',
      run: 'end',
      ending: { status: 'failed', error: 'boom (gave up after 3 of 3 attempts)' },
      deadLetter: 'Error: boom\n    at runStep',
      fast: false,
    },
  ],
  retry: [{ settlement: Settle.retryAt(5_000, 'Error: flaky'), job: 'reschedule', run: 'keep', fast: false }],
  release: [{ settlement: Settle.release(), job: 'release', run: 'keep', fast: false }],
  observeCancel: [
    { settlement: Settle.observeCancel(), job: 'delete', run: 'end', ending: { status: 'cancelled' }, fast: false },
  ],
  acknowledge: [{ settlement: Settle.acknowledge(), job: 'delete', run: 'keep', fast: true }],
};

describe('settlements', () => {
  it('has a kind for every settlement a Settle constructor makes, and no other', () => {
    expect(Object.keys(SETTLEMENT_KINDS).sort()).toEqual(Object.keys(EXPECTED).sort());
    for (const [type, cases] of Object.entries(EXPECTED)) for (const c of cases) expect(c.settlement.type).toBe(type);
  });

  describe.each(
    Object.entries(EXPECTED).flatMap(([type, cases]) => cases.map((c, i) => [`${type} #${i + 1}`, c] as const)),
  )('%s', (_name, c) => {
    const kind = kindOf(c.settlement);

    it('touches its job row and its run as declared', () => {
      expect([kind.job, kind.run]).toEqual([c.job, c.run]);
      expect(endsRun(c.settlement)).toBe(c.run === 'end');
    });

    it('ends the run with the declared status, result and error (or says nothing of an ending)', () => {
      if (c.run === 'end') expect(kind.ending!(c.settlement)).toEqual(c.ending);
      else expect(kind.ending).toBeUndefined();
    });

    it('leaves a dead letter only when it is one, with the full error text', () => {
      expect(kind.deadLetter?.(c.settlement)).toBe(c.deadLetter);
    });

    it('goes the fast path only when its row counts alone prove it applied', () => {
      expect(kind.fast).toBe(c.fast);
    });
  });

  it('builds plain data: a settlement survives a JSON round trip unchanged', () => {
    for (const cases of Object.values(EXPECTED)) {
      for (const { settlement } of cases) expect(JSON.parse(JSON.stringify(settlement))).toEqual(settlement);
    }
  });

  it('leaves reason off a dead letter that has none, so the run falls back to the error text', () => {
    expect('reason' in Settle.deadLetter('only the error')).toBe(false);
    expect(Settle.continueWith(successor)).toEqual({ type: 'continue', next: successor });
    expect(Settle.retryAt(7, 'e')).toEqual({ type: 'retry', runAt: 7, error: 'e' });
  });
});
