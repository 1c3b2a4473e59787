'use strict';
// Fallback mode, when the addon was built without V8's JIT code names (no C++ compiler or no
// Node headers at install) or PYROSCOPE_NODE_FALLBACK=1: JavaScript frames come from V8's own
// sampling profiler (node:inspector's Profiler domain), read on this thread every few
// seconds and handed to the core, which uploads them with the rest. Samples are V8's (taken
// while JavaScript runs, idle time left out), without labels; the core's per-thread CPU
// samples of native code go on as usual, unnamed inside JavaScript.

const path = require('node:path');
const { Session } = require('node:inspector');
const native = require('./native');

const cwd = process.cwd() + path.sep;
let session = null;
let timer = null;

function post(method, params) {
  let result;
  let error = null;
  // Same-thread sessions answer synchronously.
  session.post(method, params, (err, res) => {
    error = err;
    result = res;
  });
  if (error) throw error;
  return result;
}

function shown(url) {
  const file = url.startsWith('file://') ? new URL(url).pathname : url;
  return { file, shown: file.startsWith(cwd) ? `./${file.slice(cwd.length)}` : file };
}

// One frame as @pyroscope/nodejs names it: `<file>:<name>:<line>`, 1-based lines.
function frameOf(callFrame) {
  const name = callFrame.functionName;
  // V8's own entries ((program), (garbage collector)) and native functions have no script.
  if (callFrame.url === '') return [name === '' ? '(anonymous)' : name, '', 0];
  const line = callFrame.lineNumber + 1;
  const { file, shown: s } = shown(callFrame.url);
  const fn = name === '' ? `(anonymous:L#${line}:C#${callFrame.columnNumber + 1})` : name;
  return [`${s}:${fn}:${line}`, file, line];
}

function collect() {
  if (session === null) return;
  let profile;
  try {
    profile = post('Profiler.stop').profile;
    post('Profiler.start');
  } catch {
    return;
  }
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const counts = new Map();
  for (const id of profile.samples ?? []) counts.set(id, (counts.get(id) ?? 0) + 1);
  for (const [id, count] of counts) {
    const leaf = byId.get(id);
    if (leaf === undefined || leaf.callFrame.functionName === '(idle)' || leaf.callFrame.functionName === '(root)') continue;
    const functions = [];
    const files = [];
    const lines = [];
    for (let n = leaf; n !== undefined && n.callFrame.functionName !== '(root)'; n = byId.get(parent.get(n.id))) {
      const [f, file, line] = frameOf(n.callFrame);
      functions.push(f);
      files.push(file);
      lines.push(line);
    }
    native.addCpuSample(functions, files, lines, count);
  }
}

/** Starts V8's sampling profiler at `hz`, read every `everyMs`. */
function start(hz, everyMs) {
  if (session !== null) return;
  session = new Session();
  session.connect();
  post('Profiler.enable');
  post('Profiler.setSamplingInterval', { interval: Math.round(1e6 / hz) });
  post('Profiler.start');
  timer = setInterval(collect, Math.max(1000, Math.floor(everyMs / 2)));
  timer.unref();
}

/** Hands what was sampled to the core and stops. */
function stop() {
  if (session === null) return;
  collect();
  clearInterval(timer);
  try {
    post('Profiler.stop');
    post('Profiler.disable');
  } catch {
    // The session may be gone at exit.
  }
  session.disconnect();
  session = null;
}

module.exports = { start, stop, collect };
