import { WorkflowConfigError } from '../../lib/errors/index.js';
import { resolveConfig } from '../../lib/workflow.config.js';

describe('resolveConfig', () => {
  const connection = { url: 'mysql://root@127.0.0.1:3306/test' };

  it('applies the documented defaults', () => {
    const c = resolveConfig({ connection });
    expect(c).toMatchObject({
      tablePrefix: 'workflow_',
      autoMigrate: true,
      worker: { concurrency: 16, pollIntervalMs: 250, leaseMs: 30_000, shutdownTimeoutMs: 30_000 },
      defaults: { maxAttempts: 3, backoff: { baseMs: 1_000, maxMs: 300_000 }, priority: 0 },
      retention: { runsMs: 7 * 24 * 3600 * 1000, deadMs: 7 * 24 * 3600 * 1000 },
      maxPayloadBytes: 16 * 1024 * 1024,
    });
  });

  it.each([
    ['neither connection nor dataSource', {}, /connection.*dataSource/],
    ['both', { connection, dataSource: 'x' }, /not both/],
    ['a bad table prefix', { connection, tablePrefix: 'x; DROP' }, /tablePrefix/],
    ['a zero concurrency', { connection, worker: { concurrency: 0 } }, /worker.concurrency/],
    ['a fractional lease', { connection, worker: { leaseMs: 1.5 } }, /worker.leaseMs/],
    ['maxMs below baseMs', { connection, defaults: { backoff: { baseMs: 10, maxMs: 5 } } }, /maxMs/],
    ['a bad workflow name', { connection, workflows: ['has space'] }, /workflow name/],
  ])('rejects %s with WorkflowConfigError', (_name, options, message) => {
    expect(() => resolveConfig(options as any)).toThrow(WorkflowConfigError);
    expect(() => resolveConfig(options as any)).toThrow(message);
  });
});
