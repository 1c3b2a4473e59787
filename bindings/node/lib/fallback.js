'use strict';
// Fallback mode, when the addon was built without V8's JIT code names (no C++ compiler or no
// Node headers at install) or PYROSCOPE_NODE_FALLBACK=1: JavaScript frames come from V8's own
// sampling profiler (node:inspector's Profiler domain), read on this thread every few
// seconds and handed to the core, which uploads them with the rest. Samples are V8's (taken
// while JavaScript runs, idle time left out), without labels. V8 takes them by the wall
// clock, so on a busy machine they outnumber the thread's CPU time: each batch is weighed so
// that it adds up to the CPU time the thread used since the last one (its own CPU clock), the
// fractions of a sample carried per stack to the next batch. The core's per-thread CPU samples
// of native code go on as usual, unnamed inside JavaScript.

const { Session } = require('node:inspector');
const native = require('./native');

let session = null;
let timer = null;
let periodNs = 1e7;
// The thread's CPU clock at the last batch, and per stack the fraction of a sample not yet sent.
let lastCpu = 0;
let carry = new Map();
const CARRY_LIMIT = 10000;

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

// One frame as @pyroscope/nodejs names it (`<file>:<name>:<line>`, 1-based lines, source maps
// in force applied): the addon names it as it names JIT code.
function frameOf(callFrame) {
  const name = callFrame.functionName;
  // V8's own entries ((program), (garbage collector)) and native functions have no script.
  if (callFrame.url === '') return [name === '' ? '(anonymous)' : name, '', 0];
  const file = callFrame.url.startsWith('file://') ? new URL(callFrame.url).pathname : callFrame.url;
  return native.jsFrame(name, file, callFrame.lineNumber + 1, callFrame.columnNumber + 1);
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
  const stacks = [];
  let sampled = 0;
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
    stacks.push({ key: functions.join('\n') + '\n' + files.join('\n'), functions, files, lines, count });
    sampled += count;
  }
  const cpu = native.threadCpuTime();
  const used = cpu - lastCpu;
  lastCpu = cpu;
  if (sampled === 0) return;
  // Samples' worth of CPU time per V8 sample in this batch.
  const scale = used / periodNs / sampled;
  if (carry.size > CARRY_LIMIT) carry = new Map();
  for (const s of stacks) {
    const exact = s.count * scale + (carry.get(s.key) ?? 0);
    const whole = Math.floor(exact);
    carry.set(s.key, exact - whole);
    if (whole > 0) native.addCpuSample(s.functions, s.files, s.lines, whole);
  }
}

/** Starts V8's sampling profiler at `hz`, read every `everyMs`. */
function start(hz, everyMs) {
  if (session !== null) return;
  session = new Session();
  session.connect();
  periodNs = 1e9 / hz;
  lastCpu = native.threadCpuTime();
  carry = new Map();
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
