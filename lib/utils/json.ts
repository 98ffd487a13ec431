import { createHash } from 'node:crypto';
import { InvalidPayloadError } from '../errors/invalid-payload.error.js';
import { PayloadTooLargeError } from '../errors/payload-too-large.error.js';

/**
 * Serializes a JSON value, refusing what JSON.stringify would silently change
 * (functions, NaN, Map, undefined in an array or as the whole value...) so a value
 * round-trips unchanged or fails here. An object property whose value is undefined is
 * left out, as JSON.stringify does: that is how optional DTO fields read, and
 * `{ a: 1, b: undefined }` then stores (and hashes) exactly like `{ a: 1 }`.
 * Throws before anything is written.
 */
export function serializeJson(value: unknown, what: string, maxBytes: number): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(value, strictReplacer);
  } catch (err) {
    throw new InvalidPayloadError(what, err instanceof NotJson ? err.reason : (err as Error).message);
  }
  if (text === undefined) throw new InvalidPayloadError(what, `${describe(value)} has no JSON form`);
  // Byte length only matters when the string could be near the limit (UTF-8 is at most 3 bytes per UTF-16 unit).
  if (text.length * 3 > maxBytes) {
    const bytes = Buffer.byteLength(text, 'utf8');
    if (bytes > maxBytes) throw new PayloadTooLargeError(what, bytes, maxBytes);
  }
  return text;
}

class NotJson {
  constructor(readonly reason: string) {}
}

function strictReplacer(this: Record<string, unknown>, key: string, value: unknown): unknown {
  // toJSON has already run; look at the original for what it would have hidden.
  const original = this[key];
  if (original !== value && typeof original === 'object' && original !== null) {
    if (original instanceof Date && Number.isNaN(original.getTime()))
      throw new NotJson(`${at(key)} is an invalid Date`);
    if (ArrayBuffer.isView(original))
      throw new NotJson(`${at(key)} is binary (${original.constructor.name}); encode bytes as base64`);
  }
  switch (typeof value) {
    case 'undefined':
      // Dropping is only faithful for a property that is itself undefined: in an array
      // JSON.stringify would write null, and a toJSON() returning undefined hides a value.
      // An undefined top-level value is dropped from its wrapper here and refused by the caller.
      if (!Array.isArray(this) && original === undefined) return undefined;
      throw new NotJson(`${at(key)} is undefined`);
    case 'string':
    case 'boolean':
      return value;
    case 'number':
      if (!Number.isFinite(value)) throw new NotJson(`${at(key)} is ${value}`);
      return value;
    case 'object':
      if (value === null || Array.isArray(value)) return value;
      {
        const proto = Object.getPrototypeOf(value);
        if (proto === Object.prototype || proto === null) return value;
        // Values with toJSON (Date) have already been converted by JSON.stringify; others would lose data.
        throw new NotJson(`${at(key)} is a ${proto?.constructor?.name ?? 'non-plain object'}`);
      }
    default:
      throw new NotJson(`${at(key)} is ${describe(value)}`);
  }
}

function at(key: string): string {
  return key === '' ? 'the value' : `key "${key}"`;
}

function describe(value: unknown): string {
  if (typeof value === 'bigint') return 'a BigInt';
  if (typeof value === 'function') return 'a function';
  if (typeof value === 'symbol') return 'a symbol';
  if (value === undefined) return 'undefined';
  return typeof value;
}

/** Hash of a JSON text, independent of object key order, for idempotent submits. */
export function hashJson(text: string): string {
  return createHash('sha256')
    .update(canonical(JSON.parse(text)))
    .digest('hex');
}

function canonical(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  const obj = value as Record<string, unknown>;
  return `{${Object.keys(obj)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${canonical(obj[k])}`)
    .join(',')}}`;
}

export function parseJson<T = unknown>(text: string | null | undefined): T | undefined {
  return text == null ? undefined : (JSON.parse(text) as T);
}
