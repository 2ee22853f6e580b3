import { describe, expect, it } from 'vitest';
import { isCodedError } from '../../src/util/errors.ts';
import { DEFAULT_STALL_TIMEOUT_MS, stallTimeoutMs } from '../../src/util/stall.ts';

describe('CARTESIA_AIRGAP_STALL_TIMEOUT', () => {
  it('is 60 s unless set, and takes whole or decimal seconds', () => {
    expect(stallTimeoutMs({})).toBe(DEFAULT_STALL_TIMEOUT_MS);
    expect(DEFAULT_STALL_TIMEOUT_MS).toBe(60_000);
    expect(stallTimeoutMs({ CARTESIA_AIRGAP_STALL_TIMEOUT: ' ' })).toBe(60_000);
    expect(stallTimeoutMs({ CARTESIA_AIRGAP_STALL_TIMEOUT: '300' })).toBe(300_000);
    expect(stallTimeoutMs({ CARTESIA_AIRGAP_STALL_TIMEOUT: '2.5' })).toBe(2500);
  });

  it('refuses what is not a number of seconds from 1 to 86400, as bad usage', () => {
    for (const bad of ['0', '0.5', '-3', '1e3', '60s', 'abc', '86401']) {
      let err: unknown;
      try {
        stallTimeoutMs({ CARTESIA_AIRGAP_STALL_TIMEOUT: bad });
      } catch (e) {
        err = e;
      }
      expect(isCodedError(err, 'BAD_USAGE'), bad).toBe(true);
      expect((err as Error).message).toBe(`CARTESIA_AIRGAP_STALL_TIMEOUT must be a number of seconds from 1 to 86400 (default 60), not "${bad}"`);
    }
  });
});
