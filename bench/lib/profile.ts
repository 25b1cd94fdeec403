/**
 * Reads V8 .cpuprofile files (node --cpu-prof) and says where the time went: the top frames by
 * self time and a roll-up by source file, as share of the samples where the thread was not idle.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number };
  hitCount?: number;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

export interface FrameShare {
  frame: string; // "name (file:line)"
  file: string;
  selfPct: number; // of busy samples
  selfMs: number;
}

export interface ProfileSummary {
  file: string;
  busyMs: number;
  idlePct: number;
  top: FrameShare[];
  byFile: { file: string; selfPct: number }[];
}

function shortUrl(url: string, repo: string): string {
  if (!url) return '';
  const plain = url.startsWith('file://') ? url.slice('file://'.length) : url;
  return plain.startsWith(repo) ? path.relative(repo, plain) : plain;
}

export function summarizeProfile(file: string, repoDir: string, topN = 15): ProfileSummary {
  const prof = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  for (const n of prof.nodes) byId.set(n.id, n);
  // Self time per node: each sample's following delta is the time spent in that sample's node.
  const selfUs = new Map<number, number>();
  const samples = prof.samples ?? [];
  const deltas = prof.timeDeltas ?? [];
  for (let i = 0; i < samples.length; i++) {
    const dt = deltas[i + 1] ?? 0;
    selfUs.set(samples[i], (selfUs.get(samples[i]) ?? 0) + Math.max(0, dt));
  }
  let idle = 0;
  let busy = 0;
  const frames = new Map<string, { file: string; us: number }>();
  const files = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const n = byId.get(id);
    if (!n) continue;
    const { functionName, url, lineNumber } = n.callFrame;
    if (functionName === '(idle)') {
      idle += us;
      continue;
    }
    busy += us;
    const f = shortUrl(url, repoDir);
    const key = `${functionName || '(anonymous)'}${f ? ` (${f}:${lineNumber + 1})` : ''}`;
    const cur = frames.get(key) ?? { file: f || functionName, us: 0 };
    cur.us += us;
    frames.set(key, cur);
    const fileKey = f ? (f.startsWith('node:') ? 'node: internals' : f) : functionName;
    files.set(fileKey, (files.get(fileKey) ?? 0) + us);
  }
  const pct = (us: number) => (busy ? (100 * us) / busy : 0);
  const top = [...frames.entries()].sort((a, b) => b[1].us - a[1].us).slice(0, topN)
    .map(([frame, v]) => ({ frame, file: v.file, selfPct: pct(v.us), selfMs: v.us / 1000 }));
  const byFile = [...files.entries()].sort((a, b) => b[1] - a[1]).slice(0, 10).map(([f, us]) => ({ file: f, selfPct: pct(us) }));
  return { file, busyMs: busy / 1000, idlePct: busy + idle ? (100 * idle) / (busy + idle) : 0, top, byFile };
}
