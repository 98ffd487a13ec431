/**
 * Summarises a V8 .cpuprofile (from `node --cpu-prof`): self time by function and by
 * file/package. Used by main.ts when BENCH_PROFILE is set; also a CLI:
 *   node .tmp/bench/profile.js path/to/file.cpuprofile [topN]
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface HotSpot {
  name: string;
  selfMs: number;
  /** Share of all sampled time (idle included). */
  pct: number;
  /** Share of busy (non-idle) time. */
  busyPct: number;
}

function shortUrl(url: string): string {
  if (!url) return '';
  let u = url.startsWith('file://') ? fileURLToPath(url) : url;
  const nm = u.lastIndexOf('/node_modules/');
  if (nm >= 0) return u.slice(nm + '/node_modules/'.length);
  const cwd = process.cwd() + '/';
  if (u.startsWith(cwd)) u = u.slice(cwd.length);
  return u;
}

function bucketOf(url: string): string {
  const s = shortUrl(url);
  if (!s) return '(native/V8)';
  if (s.startsWith('node:')) return 'node: core';
  const m = /^(@[^/]+\/[^/]+|[^/]+)\//.exec(s);
  if (url.includes('/node_modules/') && m) return m[1];
  if (s.startsWith('dist/')) return 'nestjs-durable-workflow (dist)';
  if (s.startsWith('.tmp/bench/')) return 'bench';
  return s;
}

export function summarizeProfile(
  path: string,
  top = 20,
): { byFunction: HotSpot[]; byPackage: HotSpot[]; totalMs: number; idlePct: number } {
  const prof = JSON.parse(readFileSync(path, 'utf8')) as CpuProfile;
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  for (let i = 0; i < prof.samples.length; i++) {
    const id = prof.samples[i];
    self.set(id, (self.get(id) ?? 0) + (prof.timeDeltas[i] ?? 0));
  }
  let total = 0;
  let idle = 0;
  const fn = new Map<string, number>();
  const pkg = new Map<string, number>();
  for (const [id, us] of self) {
    const node = byId.get(id)!;
    const { functionName, url, lineNumber } = node.callFrame;
    total += us;
    if (functionName === '(idle)') {
      idle += us;
      continue;
    }
    const where = url ? `${shortUrl(url)}:${lineNumber + 1}` : '';
    const key = `${where ? `${where} ` : ''}${functionName || '(anonymous)'}`;
    fn.set(key, (fn.get(key) ?? 0) + us);
    const b =
      functionName === '(garbage collector)'
        ? '(garbage collector)'
        : functionName === '(program)'
          ? '(program)'
          : bucketOf(url);
    pkg.set(b, (pkg.get(b) ?? 0) + us);
  }
  const busy = Math.max(1, total - idle);
  const rank = (m: Map<string, number>) =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, us]) => ({
        name,
        selfMs: us / 1000,
        pct: (100 * us) / Math.max(1, total),
        busyPct: (100 * us) / busy,
      }));
  return {
    byFunction: rank(fn),
    byPackage: rank(pkg),
    totalMs: total / 1000,
    idlePct: (100 * idle) / Math.max(1, total),
  };
}

export function formatProfile(path: string, top = 20): string {
  const s = summarizeProfile(path, top);
  const lines = [
    `CPU profile ${path}: ${s.totalMs.toFixed(0)} ms sampled, ${s.idlePct.toFixed(1)}% idle (percentages below are of busy time)`,
  ];
  const row = (h: HotSpot) =>
    `    ${h.busyPct.toFixed(1).padStart(5)}%  ${h.selfMs.toFixed(0).padStart(6)} ms  ${h.name}`;
  lines.push('  self time by package:');
  for (const h of s.byPackage.slice(0, 12)) lines.push(row(h));
  lines.push('  self time by function:');
  for (const h of s.byFunction) lines.push(row(h));
  return lines.join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const file = process.argv[2];
  if (!file) {
    console.error('usage: node .tmp/bench/profile.js file.cpuprofile [topN]');
    process.exit(2);
  }
  console.log(formatProfile(file, Number(process.argv[3] ?? 25)));
}
