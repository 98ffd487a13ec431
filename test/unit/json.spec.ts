import { InvalidPayloadError, PayloadTooLargeError } from '../../lib/errors/index.js';
import { hashJson, serializeJson } from '../../lib/utils/json.js';

describe('serializeJson', () => {
  const max = 1024;

  it('keeps JSON values exactly, including odd Unicode and SQL metacharacters', () => {
    const value = { s: "'; DROP TABLE x; -- \\ \" \u0000 😀 \u202e", n: [0, -1.5, 1e300], b: true, z: null, o: {} };
    expect(JSON.parse(serializeJson(value, 'input', 10_000))).toEqual(value);
  });

  it.each([
    ['a BigInt', { a: 1n }, /BigInt/],
    ['a function', { f: () => 1 }, /function/],
    ['undefined at top level', undefined, /undefined/],
    ['an undefined property', { a: undefined }, /undefined/],
    ['NaN', { x: NaN }, /NaN/],
    ['Infinity', [Infinity], /Infinity/],
    ['a Map', { m: new Map() }, /Map/],
    ['a symbol', { s: Symbol('x') }, /symbol/],
  ])('refuses %s with InvalidPayloadError', (_name, value, message) => {
    expect(() => serializeJson(value, 'run input', max)).toThrow(InvalidPayloadError);
    expect(() => serializeJson(value, 'run input', max)).toThrow(message);
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
  it('ignores object key order but not values or array order', () => {
    expect(hashJson('{"a":1,"b":{"c":2,"d":3}}')).toBe(hashJson('{"b":{"d":3,"c":2},"a":1}'));
    expect(hashJson('{"a":1}')).not.toBe(hashJson('{"a":2}'));
    expect(hashJson('[1,2]')).not.toBe(hashJson('[2,1]'));
  });
});
