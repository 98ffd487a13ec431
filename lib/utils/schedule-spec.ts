import { Cron } from 'croner';
import { InvalidScheduleError } from '../errors/invalid-schedule.error.js';
import type { ScheduleSpec } from '../interfaces/schedule.interface.js';
import { concurrencyKeyProblem, RESERVED_HEADER_PREFIX, WORKFLOW_NAME_PATTERN } from '../workflow.constants.js';
import { hashJson, serializeJson } from './json.js';

/** Short enough that `${id}-${tickMs}` always fits a run id (128), so tick run ids need no hashing. */
export const SCHEDULE_ID_PATTERN = /^[A-Za-z0-9_-]{1,100}$/;

/** A schedule as stored: validated, defaults applied, input and headers serialized. */
export interface ResolvedSchedule {
  id: string;
  workflow: string;
  cron: string;
  timeZone: string;
  input: string;
  inputHash: string;
  headers: string;
  overlap: 'skip' | 'allow';
  paused: boolean;
  concurrencyKey: string | null;
}

/** The run a schedule's tick starts: derived from both, so firing a tick twice creates one run. */
export const tickRunId = (scheduleId: string, tickMs: number): string => `${scheduleId}-${tickMs}`;

/** Parsed patterns by zone and pattern: a tick of 10,000 schedules on one cron parses it once. */
const parsed = new Map<string, Cron>();
const PARSED_MAX = 1_000;

function cronOf(pattern: string, timeZone: string): Cron {
  const key = `${timeZone} ${pattern}`;
  let cron = parsed.get(key);
  if (!cron) {
    // No callback: croner only parses and computes, it starts no timer, and nextRun and
    // previousRuns keep no state between calls. UTC (the default) as a fixed offset: the
    // same ticks without croner's Intl time-zone conversion, ten times the cost per call.
    cron = new Cron(
      pattern,
      timeZone === 'UTC' ? { utcOffset: 0, mode: '5-or-6-parts' } : { timezone: timeZone, mode: '5-or-6-parts' },
    );
    if (parsed.size >= PARSED_MAX) parsed.clear();
    parsed.set(key, cron);
  }
  return cron;
}

/** The first tick strictly after `afterMs`, or null if the pattern has none. */
export function nextTick(pattern: string, timeZone: string, afterMs: number): number | null {
  return cronOf(pattern, timeZone).nextRun(new Date(afterMs))?.getTime() ?? null;
}

/**
 * The latest tick at or before `nowMs`, and not before `dueMs` (the tick that made the
 * schedule due): the one a late tick fires; the ones between are not replayed.
 */
export function latestTick(pattern: string, timeZone: string, dueMs: number, nowMs: number): number {
  // previousRuns is strictly before its reference, so +1 ms includes a tick at exactly now.
  const prev = cronOf(pattern, timeZone)
    .previousRuns(1, new Date(nowMs + 1))[0]
    ?.getTime();
  return prev !== undefined && prev > dueMs ? prev : dueMs;
}

/**
 * Checks a spec and applies its defaults. Throws InvalidScheduleError naming the field:
 * an id no tick run id can be built from, a cron croner refuses (or that never fires), an
 * unknown IANA time zone, a workflow not in `known`, headers or input as submit refuses them.
 */
export function resolveSchedule(
  spec: ScheduleSpec,
  known: ReadonlySet<string>,
  maxPayloadBytes: number,
  now: number,
): ResolvedSchedule {
  if (!spec || typeof spec !== 'object') throw new InvalidScheduleError(undefined, 'a ScheduleSpec must be an object.');
  const id = spec.id;
  const bad = (reason: string) => new InvalidScheduleError(typeof id === 'string' ? id : String(id), reason);
  if (typeof id !== 'string' || !SCHEDULE_ID_PATTERN.test(id)) throw bad(`id must match ${SCHEDULE_ID_PATTERN}.`);
  if (typeof spec.workflow !== 'string' || !WORKFLOW_NAME_PATTERN.test(spec.workflow) || !known.has(spec.workflow)) {
    throw bad(
      `unknown workflow ${JSON.stringify(spec.workflow)}; known: ${[...known].sort().join(', ') || '(none)'}. ` +
        'Declare its @StepRunner in this app, or list it in WorkflowModule.forRoot({ workflows }).',
    );
  }
  const timeZone = spec.timeZone ?? 'UTC';
  if (typeof timeZone !== 'string' || timeZone.length > 64 || !validTimeZone(timeZone)) {
    throw bad(`timeZone ${JSON.stringify(timeZone)} is not an IANA time zone (e.g. 'Europe/Berlin').`);
  }
  if (typeof spec.cron !== 'string' || spec.cron.length > 255)
    throw bad('cron must be a string of five or six fields.');
  let next: number | null;
  try {
    next = nextTick(spec.cron, timeZone, now);
  } catch (err) {
    throw bad(
      `invalid cron ${JSON.stringify(spec.cron)} (five fields, or six with seconds first): ${(err as Error).message}`,
    );
  }
  if (next === null) throw bad(`cron ${JSON.stringify(spec.cron)} never fires.`);
  const overlap = spec.overlap ?? 'skip';
  if (overlap !== 'skip' && overlap !== 'allow')
    throw bad(`overlap must be 'skip' or 'allow', got ${JSON.stringify(overlap)}.`);
  if (spec.paused !== undefined && typeof spec.paused !== 'boolean') throw bad('paused must be a boolean.');
  const headers: Record<string, string> = Object.create(null);
  if (spec.headers !== undefined) {
    if (!spec.headers || typeof spec.headers !== 'object' || Array.isArray(spec.headers)) {
      throw bad('headers must be an object of string values.');
    }
    for (const [key, value] of Object.entries(spec.headers)) {
      if (key.startsWith(RESERVED_HEADER_PREFIX))
        throw bad(`header "${key}": keys starting with "${RESERVED_HEADER_PREFIX}" are reserved.`);
      if (typeof value !== 'string') throw bad(`header "${key}" must be a string, got ${typeof value}.`);
      headers[key] = value;
    }
  }
  const keyProblem = concurrencyKeyProblem(spec.concurrencyKey);
  if (keyProblem) throw bad(`concurrencyKey ${keyProblem}.`);
  const input = serializeJson(spec.input === undefined ? null : spec.input, `schedule ${id} input`, maxPayloadBytes);
  return {
    id,
    workflow: spec.workflow,
    cron: spec.cron,
    timeZone,
    input,
    inputHash: hashJson(input),
    headers: serializeJson(headers, `schedule ${id} headers`, maxPayloadBytes),
    overlap,
    paused: spec.paused ?? false,
    concurrencyKey: spec.concurrencyKey ?? null,
  };
}

function validTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}
