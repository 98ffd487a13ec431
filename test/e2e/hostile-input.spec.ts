/**
 * Property-based tests (fast-check) of hostile and malformed input, through the public
 * API, against real Nest apps on the real database.
 *
 * Decisions this file pins down:
 * - Strings may hold anything JavaScript strings can hold: SQL metacharacters, NUL,
 *   control characters, emoji (4-byte UTF-8), RTL/bidi marks, U+2028, BOM, and even
 *   lone surrogates. Lone surrogates are not valid Unicode and have no UTF-8 form, but
 *   JSON.stringify (ES2019 "well-formed JSON.stringify") writes them as `\udXXX`
 *   escapes, so the stored text is plain ASCII for them and JSON.parse gives the same
 *   lone surrogate back. They therefore round-trip, and count 6 bytes each toward
 *   maxPayloadBytes. This file asserts exactly that.
 * - -0 is normalised to 0 before submitting: JSON has no negative zero
 *   (JSON.stringify(-0) === "0"), so no JSON store can keep it, and Jest's toEqual
 *   tells -0 from 0 (Object.is).
 * - A Date is not refused: it has toJSON, so it is stored as its ISO string (README:
 *   "Dates become ISO strings").
 */
import { Injectable } from '@nestjs/common';
import { Test, type TestingModule } from '@nestjs/testing';
import * as fc from 'fast-check';
import {
  InvalidPayloadError,
  InvalidRunIdError,
  InvalidRunSpecError,
  PayloadTooLargeError,
  ReservedHeaderError,
  type RunSpec,
  type Step,
  StepOutcome,
  StepRunner,
  WorkflowConfigError,
  WorkflowModule,
  WorkflowService,
} from 'nestjs-durable-workflow';
import { startApp } from '../utils/create-test-app.js';
import { DB_URL, dropTables, rawConnection, uniquePrefix } from '../utils/db.js';
import { countRows } from '../utils/tables.js';

// ------------------------------------------------------------------ runners

/** Step 0 forwards its payload; step 1 returns what it saw, payload and headers. */
@Injectable()
@StepRunner('roundtrip')
class RoundTripRunner {
  runStep(step: Step) {
    if (step.stepNumber === 0) return StepOutcome.continue(step.payload);
    return StepOutcome.succeed({ payload: step.payload, headers: step.headers });
  }
}

/** Succeeds at once with its input. */
@Injectable()
@StepRunner('echo')
class EchoRunner {
  runStep(step: Step) {
    return StepOutcome.succeed(step.payload);
  }
}

// ------------------------------------------------------------------ arbitraries

/** Pieces that break naive SQL quoting, naive UTF-8 handling or naive text layout. */
const NASTY = [
  "'",
  '"',
  '\\',
  ';',
  '--',
  '/*',
  '*/',
  '%',
  '_',
  '`',
  '\0',
  '\n',
  '\r',
  '\t',
  '\b',
  '\f',
  '\u001a',
  '\u007f',
  '😀',
  '👩‍👩‍👧',
  '🏳️‍🌈',
  '\u200f',
  '\u202e',
  '\u200b',
  '\u2028',
  '\u2029',
  '\ufeff',
  '\ufffd',
  '\uffff',
  'é',
  'e\u0301',
  'ß',
  '𝔘',
  '中文',
  'العربية',
  "' OR '1'='1' -- ",
  '"; DROP TABLE x; --',
  "\\'",
  '\\0',
  '%_%',
  '${x}',
  '?',
  '??',
  ':name',
  '\\u0000',
  '{"a":1}',
];
const loneSurrogate = fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c));

/** One "unit" of a hostile string: a nasty piece, any code point, a lone surrogate or printable ASCII. */
const hostileUnit: fc.Arbitrary<string> = fc.oneof(
  { arbitrary: fc.constantFrom(...NASTY), weight: 4 },
  { arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }), weight: 3 },
  { arbitrary: loneSurrogate, weight: 1 },
  { arbitrary: fc.string({ unit: 'grapheme-ascii', minLength: 1, maxLength: 1 }), weight: 3 },
);
const hostileString = (maxLength = 40) => fc.string({ unit: hostileUnit, maxLength });

/** Header names that are not reserved, including prototype-ish names that trip up `obj[key] = v`. */
const headerKey = fc
  .oneof(
    { arbitrary: hostileString(20), weight: 6 },
    { arbitrary: fc.constantFrom('__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf'), weight: 1 },
    {
      arbitrary: fc.constantFrom(
        '',
        'workflow',
        'workflow_',
        'Workflow.x',
        'WORKFLOW.x',
        'x.workflow.y',
        ' workflow.x',
      ),
      weight: 1,
    },
  )
  .filter((k) => !k.startsWith('workflow.'));
const goodHeaders = fc.dictionary(headerKey, hostileString(30), { maxKeys: 6 });

/** Any JSON value with hostile strings (keys too), -0 normalised to 0 (see the top of the file). */
const hostileJson = fc.jsonValue({ stringUnit: hostileUnit, maxDepth: 4 }).map(normalizeNegativeZero);

const RUN_ID = /^[A-Za-z0-9_-]{1,128}$/;
const validRunId = fc.stringMatching(RUN_ID);
/** Strings that are not valid run ids, from blatantly to subtly wrong. */
const invalidRunIdString = fc
  .oneof(
    hostileString(140),
    fc.string({ unit: 'binary', maxLength: 140 }),
    fc.constant(''),
    fc.stringMatching(/^[A-Za-z0-9_-]{129,160}$/),
    // A valid id with one foreign character somewhere: a space, a dot, a quote, a NUL, a newline, non-ASCII...
    fc
      .tuple(
        fc.stringMatching(/^[A-Za-z0-9_-]{0,60}$/),
        fc.oneof(
          fc.constantFrom(
            ' ',
            '.',
            "'",
            '"',
            '`',
            '\0',
            '\n',
            '\t',
            '/',
            '+',
            '=',
            '%',
            'é',
            'İ',
            'K',
            '😀',
            '-\u0301',
          ),
          hostileUnit,
        ),
        fc.stringMatching(/^[A-Za-z0-9_-]{0,60}$/),
      )
      .map(([a, b, c]) => a + b + c),
    // A trailing newline: `$` must not match before it.
    validRunId.map((s) => `${s}\n`),
  )
  .filter((s) => !RUN_ID.test(s));
const nonStringRunId = fc.oneof(
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.array(validRunId, { maxLength: 2 }),
  fc.dictionary(fc.string(), fc.string(), { maxKeys: 2 }),
);

/** Where to put a value inside a larger JSON document: a chain of object keys / array slots. */
type Layer =
  { kind: 'obj'; key: string; siblings: Record<string, unknown> } | { kind: 'arr'; at: number; siblings: unknown[] };
const smallJson = fc.jsonValue({ maxDepth: 1 }).map(normalizeNegativeZero);
const layers: fc.Arbitrary<Layer[]> = fc.array(
  fc.oneof(
    fc.record({
      kind: fc.constant('obj' as const),
      key: fc.string({ maxLength: 8 }),
      siblings: fc.dictionary(fc.string({ maxLength: 8 }), smallJson, { maxKeys: 3 }),
    }),
    fc.record({ kind: fc.constant('arr' as const), at: fc.nat(3), siblings: fc.array(smallJson, { maxLength: 3 }) }),
  ),
  { maxLength: 4 },
);

/** Builds a fresh document with `leaf` at the position `path` describes. */
function embed(path: Layer[], leaf: unknown): unknown {
  let value = leaf;
  for (const layer of [...path].reverse()) {
    if (layer.kind === 'obj') {
      const obj: Record<string, unknown> = {};
      for (const k of Object.keys(layer.siblings)) if (k !== layer.key) define(obj, k, layer.siblings[k]);
      define(obj, layer.key, value);
      value = obj;
    } else {
      const arr = [...layer.siblings];
      arr.splice(Math.min(layer.at, arr.length), 0, value);
      value = arr;
    }
  }
  return value;
}

/** Own data property, also for the key "__proto__" (plain assignment would set the prototype). */
function define(obj: Record<string, unknown>, key: string, value: unknown): void {
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

function normalizeNegativeZero(value: unknown): unknown {
  if (typeof value === 'number') return Object.is(value, -0) ? 0 : value;
  if (Array.isArray(value)) return value.map(normalizeNegativeZero);
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(value)) define(out, k, normalizeNegativeZero((value as Record<string, unknown>)[k]));
    return out;
  }
  return value;
}

/**
 * UTF-8 size of JSON.stringify(s), computed independently of JSON.stringify and
 * Buffer.byteLength: quotes, two-byte escapes, \u00XX for other controls, 6-byte
 * \udXXX for lone surrogates, 1-4 bytes for everything else.
 */
function jsonStringBytes(s: string): number {
  let n = 2;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x22 || c === 0x5c) n += 2;
    else if (c === 0x08 || c === 0x09 || c === 0x0a || c === 0x0c || c === 0x0d) n += 2;
    else if (c < 0x20) n += 6;
    else if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (
      c >= 0xd800 &&
      c <= 0xdbff &&
      i + 1 < s.length &&
      s.charCodeAt(i + 1) >= 0xdc00 &&
      s.charCodeAt(i + 1) <= 0xdfff
    ) {
      n += 4;
      i++;
    } else if (c >= 0xd800 && c <= 0xdfff) n += 6;
    else n += 3;
  }
  return n;
}

/** Runs `fn`, which must reject with `type`, and proves that the tables did not change. */
async function rejectsWithoutWriting(
  prefix: string,
  fn: () => Promise<unknown>,
  type: new (...args: any[]) => Error,
): Promise<Error> {
  const before = await countRows(prefix);
  const err = await fn().then(
    (v) => new Error(`expected ${type.name}, but the call resolved with ${JSON.stringify(v)}`),
    (e: Error) => e,
  );
  if (!(err instanceof type)) {
    const got = err as Error | undefined;
    throw new Error(`expected ${type.name}, got ${got?.constructor?.name}: ${got?.message}`);
  }
  expect(await countRows(prefix)).toEqual(before);
  return err;
}

const WAIT = { timeoutMs: 10_000 };

/** A printable description of any value (String() throws on null-prototype objects). */
function describeValue(v: unknown): string {
  try {
    return JSON.stringify(v) ?? typeof v;
  } catch {
    return typeof v;
  }
}
let serial = 0;
const freshId = (tag: string) => `${tag}-${process.pid}-${serial++}`;

// ------------------------------------------------------------------ tests

describe('hostile input (property-based)', () => {
  const prefix = uniquePrefix('hostile');
  let app: TestingModule;
  let wf: WorkflowService;

  beforeAll(async () => {
    app = await startApp({ prefix, providers: [RoundTripRunner, EchoRunner] });
    wf = app.get(WorkflowService);
  });
  afterAll(async () => {
    await app?.close();
    await dropTables(prefix);
  });

  it('1. arbitrary JSON inputs and hostile header strings round-trip unchanged through two steps, status and outcome', async () => {
    await fc.assert(
      fc.asyncProperty(hostileJson, goodHeaders, async (input, headers) => {
        const { runId, newlySubmitted } = await wf.submit('roundtrip', { input, headers });
        expect(newlySubmitted).toBe(true);
        const outcome = await wf.waitForOutcome(runId, WAIT);
        expect(outcome.status).toBe('succeeded');
        expect(outcome.result).toEqual({ payload: input, headers });
        expect(outcome.headers).toEqual(headers);
        expect((await wf.status(runId))!.headers).toEqual(headers);
        // The stored input hashes the same: resubmitting it is idempotent, not a mismatch.
        expect(await wf.submit('roundtrip', { runId, input, headers })).toEqual({ runId, newlySubmitted: false });
      }),
      { numRuns: 60 },
    );
  });

  it('1a. arbitrary JSON inputs alone (no headers), also nested under keys like "__proto__", round-trip unchanged', async () => {
    const input = fc.oneof(
      hostileJson,
      fc.tuple(layers, hostileJson).map(([path, leaf]) => embed(path, leaf)),
      fc.tuple(fc.constantFrom('__proto__', 'constructor', 'toString'), hostileJson).map(([k, v]) => {
        const o: Record<string, unknown> = {};
        define(o, k, v);
        return o;
      }),
    );
    await fc.assert(
      fc.asyncProperty(input, async (value) => {
        const { runId } = await wf.submit('roundtrip', { input: value });
        const outcome = await wf.waitForOutcome(runId, WAIT);
        expect(outcome.status).toBe('succeeded');
        expect(outcome.result).toEqual({ payload: value, headers: {} });
        expect(await wf.submit('roundtrip', { runId, input: value })).toEqual({ runId, newlySubmitted: false });
      }),
      { numRuns: 60 },
    );
  });

  // Fails today: WorkflowService.prepare() copies headers with `headers[key] = value` into a
  // plain `{}`, so "__proto__" hits the Object.prototype setter and is silently dropped.
  it('1c. a header named like an Object.prototype member ("__proto__", "constructor"...) is kept, not silently dropped', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom('__proto__', 'constructor', 'toString', 'hasOwnProperty'),
        hostileString(10),
        async (key, value) => {
          const headers: Record<string, string> = {};
          define(headers, key, value);
          const { runId } = await wf.submit('roundtrip', { input: null, headers });
          const outcome = await wf.waitForOutcome(runId, WAIT);
          expect(Object.entries(outcome.headers)).toEqual([[key, value]]);
          expect(Object.entries((outcome.result as { headers: object }).headers)).toEqual([[key, value]]);
          expect(Object.entries((await wf.status(runId))!.headers)).toEqual([[key, value]]);
        },
      ),
      { numRuns: 12 },
    );
  });

  it('1b. lone surrogates, NUL and SQL metacharacters survive as input, header names and header values', async () => {
    const nasty = fc.string({ unit: fc.oneof(loneSurrogate, fc.constantFrom(...NASTY)), minLength: 1, maxLength: 12 });
    await fc.assert(
      fc.asyncProperty(
        nasty,
        nasty.filter((k) => !k.startsWith('workflow.')),
        nasty,
        async (text, key, value) => {
          const input = { [text]: text, list: [text, { text }] };
          const headers: Record<string, string> = {};
          define(headers, key, value);
          const { runId } = await wf.submit('roundtrip', { input, headers });
          const outcome = await wf.waitForOutcome(runId, WAIT);
          expect(outcome.result).toEqual({ payload: input, headers });
          expect(outcome.headers).toEqual(headers);
        },
      ),
      { numRuns: 40 },
    );
  });

  it('2a. valid run ids are accepted exactly as given and are idempotent; ids differing only in case are different runs', async () => {
    const hasLetter = validRunId.filter((s) => /[A-Za-z]/.test(s));
    await fc.assert(
      fc.asyncProperty(hasLetter, async (id) => {
        const swapped = [...id].map((ch) => (ch === ch.toLowerCase() ? ch.toUpperCase() : ch.toLowerCase())).join('');
        const existed = [(await wf.status(id)) !== null, (await wf.status(swapped)) !== null];

        const first = await wf.submitMany('echo', [
          { runId: id, input: { id } },
          { runId: swapped, input: { id: swapped } },
        ]);
        expect(first).toEqual([
          { runId: id, newlySubmitted: !existed[0] },
          { runId: swapped, newlySubmitted: !existed[1] },
        ]);
        expect(await wf.submit('echo', { runId: id, input: { id } })).toEqual({ runId: id, newlySubmitted: false });
        expect(await wf.submit('echo', { runId: swapped, input: { id: swapped } })).toEqual({
          runId: swapped,
          newlySubmitted: false,
        });

        expect(await wf.waitForOutcome(id, WAIT)).toMatchObject({ runId: id, status: 'succeeded', result: { id } });
        expect(await wf.waitForOutcome(swapped, WAIT)).toMatchObject({
          runId: swapped,
          status: 'succeeded',
          result: { id: swapped },
        });
      }),
      { numRuns: 40 },
    );
  });

  it('2b. invalid run ids throw InvalidRunIdError, alone or inside a batch, and write nothing', async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(invalidRunIdString, nonStringRunId), async (bad) => {
        const good = freshId('ok');
        await rejectsWithoutWriting(
          prefix,
          () => wf.submit('echo', { runId: bad as string, input: { bad: describeValue(bad) } }),
          InvalidRunIdError,
        );
        await rejectsWithoutWriting(
          prefix,
          () =>
            wf.submitMany('echo', [
              { runId: good, input: 1 },
              { runId: bad as string, input: 2 },
            ]),
          InvalidRunIdError,
        );
        expect(await wf.status(good)).toBeNull();
        // The read side refuses them the same way, never with a database error.
        await expect(wf.status(bad as string)).rejects.toBeInstanceOf(InvalidRunIdError);
        await expect(wf.cancel(bad as string)).rejects.toBeInstanceOf(InvalidRunIdError);
        await expect(wf.waitForOutcome(bad as string, { timeoutMs: 0 })).rejects.toBeInstanceOf(InvalidRunIdError);
      }),
      { numRuns: 50 },
    );
  });

  it('2c. hostile strings given to status() and cancel() throw InvalidRunIdError, never a database error', async () => {
    await fc.assert(
      fc.asyncProperty(
        hostileString(70).filter((s) => !RUN_ID.test(s)),
        async (s) => {
          await expect(wf.status(s)).rejects.toBeInstanceOf(InvalidRunIdError);
          await expect(wf.cancel(s)).rejects.toBeInstanceOf(InvalidRunIdError);
        },
      ),
      { numRuns: 40 },
    );
  });

  // 2d/2e fail today on MariaDB: job_id / workflow are ascii_bin columns, and comparing them with
  // a non-ASCII parameter is ER_CANT_AGGREGATE_2COLLATIONS (1267) instead of "no match".
  it('2d. retryDead() with a hostile job id is false (no such dead letter), never a database error', async () => {
    await fc.assert(
      fc.asyncProperty(hostileString(70), async (s) => {
        expect(await wf.retryDead(s)).toBe(false);
      }),
      { numRuns: 40 },
    );
  });

  it('2e. deadSteps({ workflow }) with a hostile workflow name is [] (nothing dead under that name), never a database error', async () => {
    await fc.assert(
      fc.asyncProperty(hostileString(70), async (s) => {
        expect(await wf.deadSteps({ workflow: s, limit: 5 })).toEqual([]);
      }),
      { numRuns: 40 },
    );
  });

  it('3a. a header name starting with "workflow." throws ReservedHeaderError, wherever it sits, and writes nothing', async () => {
    await fc.assert(
      fc.asyncProperty(
        goodHeaders,
        hostileString(10),
        hostileString(10),
        fc.nat(6),
        async (good, suffix, value, at) => {
          const badKey = `workflow.${suffix}`;
          const entries = Object.entries(good);
          entries.splice(Math.min(at, entries.length), 0, [badKey, value]);
          const headers: Record<string, string> = {};
          for (const [k, v] of entries) define(headers, k, v);

          const err = await rejectsWithoutWriting(
            prefix,
            () => wf.submit('echo', { runId: freshId('rh'), input: {}, headers }),
            ReservedHeaderError,
          );
          expect((err as ReservedHeaderError).header).toBe(badKey);
          await rejectsWithoutWriting(
            prefix,
            () =>
              wf.submitMany('echo', [
                { runId: freshId('rh-ok'), input: {} },
                { runId: freshId('rh'), input: {}, headers },
              ]),
            ReservedHeaderError,
          );
        },
      ),
      { numRuns: 40 },
    );
  });

  it('3b. a non-string header value, or headers that are not an object, throw InvalidRunSpecError and write nothing', async () => {
    const nonString = fc.oneof(
      fc.integer(),
      fc.double(),
      fc.boolean(),
      fc.constant(null),
      fc.constant(undefined),
      fc.bigInt(),
      fc.array(fc.string(), { maxLength: 2 }),
      fc.dictionary(fc.string(), fc.string(), { maxKeys: 2 }),
      fc.constant(() => 'x'),
      fc.constant(new Date(0)),
    );
    const notAnObject = fc.oneof(
      fc.string(),
      fc.integer(),
      fc.boolean(),
      fc.constant(null),
      fc.array(fc.string(), { maxLength: 3 }),
    );
    const badHeaders = fc.oneof(
      fc.tuple(goodHeaders, headerKey, nonString, fc.nat(6)).map(([good, key, value, at]) => {
        const entries: Array<[string, unknown]> = Object.entries(good).filter(([k]) => k !== key);
        entries.splice(Math.min(at, entries.length), 0, [key, value]);
        const headers: Record<string, unknown> = {};
        for (const [k, v] of entries) define(headers, k, v);
        return headers;
      }),
      notAnObject,
    );
    await fc.assert(
      fc.asyncProperty(badHeaders, async (headers) => {
        const spec = { runId: freshId('bh'), input: {}, headers } as unknown as RunSpec<unknown>;
        await rejectsWithoutWriting(prefix, () => wf.submit('echo', spec), InvalidRunSpecError);
        await rejectsWithoutWriting(
          prefix,
          () => wf.submitMany('echo', [{ runId: freshId('bh-ok'), input: {} }, spec]),
          InvalidRunSpecError,
        );
        expect(await wf.status(spec.runId!)).toBeNull();
      }),
      { numRuns: 50 },
    );
  });

  it('5a. inputs that are not JSON (BigInt, cycles, functions, NaN, ±Infinity, Map, Set, class instances...) anywhere in the document throw InvalidPayloadError and write nothing', async () => {
    class Point {
      constructor(
        public x = 1,
        public y = 2,
      ) {}
    }
    const poison: fc.Arbitrary<() => unknown> = fc.oneof(
      fc.bigInt().map((b) => () => b),
      fc.constant(() => () => 1),
      fc.constant(() => async () => 1),
      fc.constant(() => Symbol('s')),
      fc.constantFrom(NaN, Infinity, -Infinity).map((n) => () => n),
      fc.array(fc.tuple(fc.string(), fc.integer()), { maxLength: 3 }).map((e) => () => new Map(e)),
      fc.array(fc.integer(), { maxLength: 3 }).map((e) => () => new Set(e)),
      fc.tuple(fc.integer(), fc.integer()).map(
        ([x, y]) =>
          () =>
            new Point(x, y),
      ),
      fc.constant(() => new Uint8Array([1, 2, 3])),
      fc.constant(() => new Error('boom')),
      fc.constant(() => /re/g),
      fc.constant(() => Object.create({ inherited: true })),
      fc.constant(() => new WeakMap()),
      fc.constant(() => Promise.resolve(1)),
      // A cycle: an object that contains itself somewhere below.
      fc.constant(() => {
        const o: Record<string, unknown> = { name: 'loop' };
        o.self = { again: [o] };
        return o;
      }),
    );
    await fc.assert(
      fc.asyncProperty(layers, poison, async (path, make) => {
        const input = embed(path, make());
        const id = freshId('np');
        await rejectsWithoutWriting(prefix, () => wf.submit('echo', { runId: id, input }), InvalidPayloadError);
        await rejectsWithoutWriting(
          prefix,
          () =>
            wf.submitMany('echo', [
              { runId: freshId('np-ok'), input: { fine: true } },
              { runId: id, input },
            ]),
          InvalidPayloadError,
        );
        expect(await wf.status(id)).toBeNull();
      }),
      { numRuns: 60 },
    );
  });

  it('5f. undefined as an array element anywhere (or as the whole input) throws InvalidPayloadError and writes nothing', async () => {
    const arrayLayer = fc.record({
      kind: fc.constant('arr' as const),
      at: fc.nat(3),
      siblings: fc.array(smallJson, { maxLength: 3 }),
    });
    const intoArray = fc.oneof(
      fc.constant([] as Layer[]),
      fc.tuple(layers, arrayLayer).map(([path, last]) => [...path, last]),
    );
    await fc.assert(
      fc.asyncProperty(intoArray, async (path) => {
        const id = freshId('ua');
        await rejectsWithoutWriting(
          prefix,
          () => wf.submit('echo', { runId: id, input: embed(path, undefined) }),
          InvalidPayloadError,
        );
        expect(await wf.status(id)).toBeNull();
      }),
      { numRuns: 40 },
    );
  });

  it('5g. an object property whose value is undefined, anywhere, is left out (as JSON.stringify does), and re-submitting with or without it is idempotent', async () => {
    const objectLayer = fc.record({
      kind: fc.constant('obj' as const),
      key: fc.string({ maxLength: 8 }),
      siblings: fc.dictionary(fc.string({ maxLength: 8 }), smallJson, { maxKeys: 3 }),
    });
    await fc.assert(
      fc.asyncProperty(layers, objectLayer, async (path, last) => {
        const input = embed([...path, last], undefined);
        // The same document built without the key: what must be stored.
        const without: Record<string, unknown> = {};
        for (const k of Object.keys(last.siblings)) if (k !== last.key) define(without, k, last.siblings[k]);
        const expected = embed(path, without);

        const { runId } = await wf.submit('roundtrip', { input });
        const outcome = await wf.waitForOutcome(runId, WAIT);
        expect(outcome.status).toBe('succeeded');
        // toStrictEqual: a key present with value undefined would not match a missing key.
        expect(outcome.result).toStrictEqual({ payload: expected, headers: {} });
        expect(await wf.submit('roundtrip', { runId, input: expected })).toEqual({ runId, newlySubmitted: false });
        expect(await wf.submit('roundtrip', { runId, input })).toEqual({ runId, newlySubmitted: false });
      }),
      { numRuns: 30 },
    );
  });

  it('5b. a spec whose input property is undefined (present but undefined) throws InvalidPayloadError and writes nothing', async () => {
    await rejectsWithoutWriting(
      prefix,
      () => wf.submit('echo', { runId: freshId('undef'), input: undefined }),
      InvalidPayloadError,
    );
  });

  it('5c. a valid Date anywhere in the input is stored as its ISO string (documented), and the run sees that string', async () => {
    await fc.assert(
      fc.asyncProperty(layers, fc.date({ noInvalidDate: true }), async (path, date) => {
        const { runId } = await wf.submit('echo', { input: embed(path, date) });
        const outcome = await wf.waitForOutcome(runId, WAIT);
        expect(outcome.status).toBe('succeeded');
        expect(outcome.result).toEqual(embed(path, date.toISOString()));
      }),
      { numRuns: 30 },
    );
  });

  it('5d. an invalid Date (which JSON.stringify silently turns into null) throws InvalidPayloadError and writes nothing', async () => {
    // new Date(NaN).toJSON() is null: storing it would silently change the value, the
    // same loss as NaN -> null, which the module refuses.
    await fc.assert(
      fc.asyncProperty(layers, async (path) => {
        await rejectsWithoutWriting(
          prefix,
          () => wf.submit('echo', { runId: freshId('bad-date'), input: embed(path, new Date(NaN)) }),
          InvalidPayloadError,
        );
      }),
      { numRuns: 10 },
    );
  });
});

describe('hostile input: payload size boundary (maxPayloadBytes 4096)', () => {
  const LIMIT = 4096;
  const prefix = uniquePrefix('hostilesize');
  let app: TestingModule;
  let wf: WorkflowService;

  beforeAll(async () => {
    app = await startApp({ prefix, providers: [EchoRunner], options: { maxPayloadBytes: LIMIT } });
    wf = app.get(WorkflowService);
  });
  afterAll(async () => {
    await app?.close();
    await dropTables(prefix);
  });

  it('4. inputs and headers are accepted up to exactly maxPayloadBytes UTF-8 bytes and refused one byte above', async () => {
    const piece = fc.constantFrom(
      'a',
      'é',
      '€',
      '😀',
      '"',
      '\\',
      '\n',
      '\u0001',
      '\ud800',
      '\udc00',
      "'",
      ';',
      '\u202e',
      '中',
    );
    await fc.assert(
      fc.asyncProperty(
        fc.array(piece, { maxLength: 200 }),
        fc.integer({ min: -6, max: 6 }),
        fc.boolean(),
        async (pieces, delta, inHeaders) => {
          const tail = pieces.join('');
          // Shape: input { text } -> {"text":"..."} (9 bytes around the string); headers { h } -> {"h":"..."} (6 bytes).
          const overhead = inHeaders ? 6 : 9;
          const target = LIMIT + delta;
          const text = 'a'.repeat(target - overhead - jsonStringBytes(tail)) + tail;
          const input = inHeaders ? { small: true } : { text };
          const headers: Record<string, string> = inHeaders ? { h: text } : {};
          const measured = inHeaders ? headers : input;
          // The oracle above must agree with the definition (UTF-8 bytes of the JSON text).
          expect(jsonStringBytes(text) + overhead).toBe(target);
          expect(Buffer.byteLength(JSON.stringify(measured), 'utf8')).toBe(target);

          const runId = freshId('sz');
          if (target <= LIMIT) {
            expect(await wf.submit('echo', { runId, input, headers })).toEqual({ runId, newlySubmitted: true });
            const outcome = await wf.waitForOutcome(runId, WAIT);
            expect(outcome).toMatchObject({ status: 'succeeded' });
            expect(outcome.result).toEqual(input);
            expect(outcome.headers).toEqual(headers);
          } else {
            const err = (await rejectsWithoutWriting(
              prefix,
              () => wf.submit('echo', { runId, input, headers }),
              PayloadTooLargeError,
            )) as PayloadTooLargeError;
            expect(err.bytes).toBe(target);
            expect(err.limit).toBe(LIMIT);
          }
        },
      ),
      { numRuns: 60 },
    );
  });
});

describe('hostile input: tablePrefix', () => {
  const PREFIX_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,40}$/;
  const TABLES = ['runs', 'jobs', 'dead', 'migrations'];
  const created: string[] = [];

  afterAll(async () => {
    for (const p of created) await dropTables(p);
  });

  /** Which of the four tables of prefix `p` exist (compared in JS: information_schema is utf8mb3 and cannot take 4-byte characters). */
  async function existingTables(p: unknown): Promise<string[]> {
    if (typeof p !== 'string') return [];
    const wanted = new Set(TABLES.map((t) => p + t));
    const conn = await rawConnection();
    try {
      const [rows] = await conn.query(
        'SELECT table_name AS t FROM information_schema.tables WHERE table_schema = DATABASE()',
      );
      return (rows as Array<{ t: string }>)
        .map((r) => r.t)
        .filter((t) => wanted.has(t))
        .sort();
    } finally {
      await conn.end();
    }
  }

  async function start(tablePrefix: unknown, worker: false | undefined): Promise<TestingModule> {
    const app = await Test.createTestingModule({
      imports: [
        WorkflowModule.forRoot({
          connection: { url: DB_URL },
          tablePrefix: tablePrefix as string,
          worker: worker ?? { pollIntervalMs: 50, leaseMs: 5_000, shutdownTimeoutMs: 2_000 },
        }),
      ],
      providers: worker === false ? [] : [EchoRunner],
    }).compile();
    try {
      await app.init();
    } catch (err) {
      await app.close().catch(() => undefined);
      throw err;
    }
    return app;
  }

  it('6a. a tablePrefix outside ^[A-Za-z_][A-Za-z0-9_]{0,40}$ fails startup with WorkflowConfigError, never an SQL error, and creates nothing', async () => {
    const badPrefix = fc
      .oneof(
        hostileString(50),
        fc.string({ unit: 'binary', maxLength: 50 }),
        fc.constant(''),
        fc.stringMatching(/^[0-9][A-Za-z0-9_]{0,20}$/),
        fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_]{41,60}$/),
        fc
          .tuple(
            fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_]{0,15}$/),
            fc.constantFrom('`', "'", '"', ' ', '-', '.', '$', ';', '\0', '\n', 'é', '😀', '/', '\\', '\u202e'),
            fc.stringMatching(/^[A-Za-z0-9_]{0,15}$/),
          )
          .map(([a, b, c]) => a + b + c),
      )
      .filter((p) => !PREFIX_PATTERN.test(p));
    const nonString = fc.oneof(
      fc.integer(),
      fc.boolean(),
      fc.array(fc.string(), { maxLength: 2 }),
      fc.dictionary(fc.string(), fc.string(), { maxKeys: 1 }),
    );
    await fc.assert(
      fc.asyncProperty(fc.oneof(badPrefix, nonString), async (p) => {
        const before = await existingTables(p);
        const err = await start(p, false).then(
          async (app) => {
            await app.close();
            return new Error(`the app started with tablePrefix ${JSON.stringify(p)}`);
          },
          (e: Error) => e,
        );
        expect(err).toBeInstanceOf(WorkflowConfigError);
        expect(await existingTables(p)).toEqual(before);
      }),
      { numRuns: 60 },
    );
  });

  it('6b. any prefix matching the pattern works end to end (a small sample: each one creates tables)', async () => {
    // Namespaced with this process's id so that dropping them afterwards can never touch
    // another test's tables; the rest of the prefix is arbitrary within the pattern, up to
    // the full 41 characters.
    const head = `hx${process.pid % 100000}_`;
    const seen = new Set<string>();
    const goodPrefix = fc
      .stringMatching(new RegExp(`^[A-Za-z0-9_]{0,${41 - head.length}}$`))
      .map((tail) => head + tail)
      .filter((p) => PREFIX_PATTERN.test(p));
    await fc.assert(
      fc.asyncProperty(goodPrefix, async (p) => {
        if (!seen.has(p)) {
          seen.add(p);
          created.push(p);
          expect(await existingTables(p)).toEqual([]);
        }
        const app = await start(p, undefined);
        try {
          const wf = app.get(WorkflowService);
          const { runId } = await wf.submit('echo', { input: { prefix: p } });
          expect(await wf.waitForOutcome(runId, WAIT)).toMatchObject({ status: 'succeeded', result: { prefix: p } });
          expect(await existingTables(p)).toEqual(TABLES.map((t) => p + t).sort());
          expect((await countRows(p)).runs).toBeGreaterThanOrEqual(1);
        } finally {
          await app.close();
        }
      }),
      { numRuns: 5, examples: [[`${head}${'Z'.repeat(41 - head.length)}`]] },
    );
  });
});
