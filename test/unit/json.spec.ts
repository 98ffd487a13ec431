import { InvalidPayloadError, PayloadTooLargeError } from '../../lib/errors/index.js';
import { hashJson, serializeJson } from '../../lib/utils/json.js';

describe('serializeJson', () => {
  const max = 1024;

  it('keeps JSON values exactly, including odd Unicode and SQL metacharacters', () => {
    const value = { s: '\'; DROP TABLE x; -- \\ " \u0000 😀 \u202e', n: [0, -1.5, 1e300], b: true, z: null, o: {} };
    expect(JSON.parse(serializeJson(value, 'input', 10_000))).toEqual(value);
  });

  it.each([
    ['a BigInt', { a: 1n }, /BigInt/],
    ['a function', { f: () => 1 }, /function/],
    ['undefined at top level', undefined, /undefined/],
    ['undefined as an array element', [1, undefined], /undefined/],
    ['undefined in a nested array', { a: [{ b: [undefined] }] }, /undefined/],
    // eslint-disable-next-line no-sparse-arrays -- the hole is the point
    ['an array hole', [1, , 3], /undefined/],
    ['a property whose toJSON returns undefined', { a: { toJSON: () => undefined } }, /undefined/],
    ['a top-level toJSON that returns undefined', { toJSON: () => undefined }, /undefined/],
    ['NaN', { x: NaN }, /NaN/],
    ['Infinity', [Infinity], /Infinity/],
    ['a Map', { m: new Map() }, /Map/],
    ['a symbol', { s: Symbol('x') }, /symbol/],
  ])('refuses %s with InvalidPayloadError', (_name, value, message) => {
    expect(() => serializeJson(value, 'run input', max)).toThrow(InvalidPayloadError);
    expect(() => serializeJson(value, 'run input', max)).toThrow(message);
  });

  it('drops object properties whose value is undefined, at any depth, as JSON.stringify does', () => {
    expect(serializeJson({ a: 1, b: undefined }, 'run input', max)).toBe('{"a":1}');
    expect(serializeJson({ b: undefined }, 'run input', max)).toBe('{}');
    expect(serializeJson({ '': undefined, x: null }, 'run input', max)).toBe('{"x":null}');
    const nested = { list: [{ keep: 'x', drop: undefined }], deep: { a: { b: undefined, c: [1] } } };
    expect(JSON.parse(serializeJson(nested, 'run input', max))).toEqual({
      list: [{ keep: 'x' }],
      deep: { a: { c: [1] } },
    });
    // A DTO-style object with an optional field left unset (null prototype too).
    const bare = Object.assign(Object.create(null), { id: 7, note: undefined });
    expect(serializeJson(bare, 'run input', max)).toBe('{"id":7}');
  });

  it('still names the offending key when something other than undefined is wrong next to a dropped one', () => {
    expect(() => serializeJson({ gone: undefined, f: () => 1 }, 'run input', max)).toThrow(/key "f" is a function/);
  });

  it('refuses a cycle with InvalidPayloadError', () => {
    const a: Record<string, unknown> = {};
    a.self = a;
    expect(() => serializeJson(a, 'run input', max)).toThrow(InvalidPayloadError);
  });

  it('counts UTF-8 bytes against the limit', () => {
    expect(() => serializeJson('é'.repeat(600), 'run input', max)).toThrow(PayloadTooLargeError);
    expect(serializeJson('e'.repeat(600), 'run input', max)).toHaveLength(602);
  });
});

describe('hashJson', () => {
  it('hashes an input with undefined properties like the same input without them', () => {
    const hash = (v: unknown) => hashJson(serializeJson(v, 'run input', 1024));
    expect(hash({ a: 1, b: undefined })).toBe(hash({ a: 1 }));
    expect(hash({ b: undefined, a: { c: undefined, d: [2] } })).toBe(hash({ a: { d: [2] } }));
    expect(hash({ a: 1, b: undefined })).not.toBe(hash({ a: 1, b: null }));
  });

  it('ignores object key order but not values or array order', () => {
    expect(hashJson('{"a":1,"b":{"c":2,"d":3}}')).toBe(hashJson('{"b":{"d":3,"c":2},"a":1}'));
    expect(hashJson('{"a":1}')).not.toBe(hashJson('{"a":2}'));
    expect(hashJson('[1,2]')).not.toBe(hashJson('[2,1]'));
  });
});
