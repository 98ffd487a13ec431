import { randomFillSync } from 'node:crypto';

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
const pool = Buffer.alloc(4096);
let poolOffset = pool.length;
let lastTime = -1;
const lastRandom = new Uint8Array(10);

function fillRandom(target: Uint8Array): void {
  if (poolOffset + target.length > pool.length) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  pool.copy(target, 0, poolOffset, poolOffset + target.length);
  poolOffset += target.length;
}

/**
 * A ULID: 26 Crockford base32 characters, sortable by creation time and monotonic
 * within this process, so ids generated in one millisecond still sort in order and
 * InnoDB primary keys grow at the end.
 */
export function ulid(now = Date.now()): string {
  if (now <= lastTime) {
    // Same (or earlier: clock stepped back) millisecond: keep the last time, bump the random part.
    for (let i = lastRandom.length - 1; i >= 0; i--) {
      if (lastRandom[i] !== 255) {
        lastRandom[i]++;
        break;
      }
      lastRandom[i] = 0;
    }
  } else {
    lastTime = now;
    fillRandom(lastRandom);
  }
  let out = '';
  let t = lastTime;
  for (let i = 0; i < 10; i++) {
    out = ALPHABET[t % 32] + out;
    t = Math.floor(t / 32);
  }
  // 80 random bits -> 16 characters of 5 bits.
  let bits = 0;
  let value = 0;
  for (const byte of lastRandom) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += ALPHABET[(value >> bits) & 31];
    }
    value &= (1 << bits) - 1;
  }
  return out;
}
