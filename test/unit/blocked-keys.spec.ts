import { BlockedKeys, type KeyState, keyId } from '../../lib/storage/flow.js';

const state = (blocked: Array<[string, string]>): KeyState => ({
  limit: new Map(),
  leased: new Map(),
  blocked: new Set(blocked.map(([q, k]) => keyId(q, k))),
});

describe('BlockedKeys (the settle path’s hint of keys with steps waiting)', () => {
  it('remembers parked keys until a settlement reads them free', () => {
    const hint = new BlockedKeys();
    hint.parked('w', ['a']);
    expect(hint.anyOf(new Map([['w', ['b', 'a']]]))).toBe(true);
    expect(hint.anyOf(new Map([['other', ['a']]]))).toBe(false);
    hint.saw(new Map([['w', ['a', 'b']]]), state([['w', 'b']]));
    expect(hint.anyOf(new Map([['w', ['a']]]))).toBe(false);
    expect(hint.anyOf(new Map([['w', ['b']]]))).toBe(true);
  });

  it('stays bounded however many keys it meets', () => {
    const hint = new BlockedKeys();
    for (let i = 0; i < BlockedKeys.MAX * 3 + 7; i++) hint.parked('w', [`tenant-${i}`]);
    expect(hint.size).toBeLessThanOrEqual(BlockedKeys.MAX);
    expect(hint.anyOf(new Map([['w', [`tenant-${BlockedKeys.MAX * 3 + 6}`]]]))).toBe(true);
  });
});
