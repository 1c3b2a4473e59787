'use strict';
// The @pyroscope/nodejs 0.6 API on the profiler's core: real CPU time sampled per thread by
// the core (a real-time signal), JavaScript frames named from V8's JIT code events, labels
// that follow async work, uploads from the core's own thread.

const v8 = require('node:v8');
const { isMainThread } = require('node:worker_threads');

const native = require('./lib/native');
const labels = require('./lib/labels');
const workers = require('./lib/workers');
const fallback = require('./lib/fallback');
const { checkConfig, getEnv, processConfig, nativeOptions } = require('./lib/config');
const { version } = require('./package.json');

let settings = null;
let logger = null;
let exitHooked = false;

function log(level, message) {
  if (logger !== null && typeof logger[level] === 'function') logger[level](message);
}

function requireInit(what) {
  if (settings === null) throw new Error(`pyroscope: call init() before ${what}()`);
  return settings;
}

/** Checks and keeps the configuration; does not start profiling (start() does). */
function init(config = {}) {
  checkConfig(config);
  const processed = processConfig(config, getEnv());
  const options = nativeOptions(processed, version);
  native.check(options);
  labels.configure({ async: processed.asyncLabels });
  settings = { processed, options };
}

// Interpreted functions get a frame of their own (a copy of the interpreter's entry) from now
// on; functions interpreted before keep the shared one until V8 compiles them.
function nameInterpretedFrames() {
  v8.setFlagsFromString('--interpreted-frames-native-stack');
}

// Fallback mode: no JIT code names in this build (or PYROSCOPE_NODE_FALLBACK=1); JavaScript
// frames then come from V8's sampling profiler (lib/fallback.js).
const fallbackMode = !native.jitNamesAvailable() || process.env.PYROSCOPE_NODE_FALLBACK === '1';

function onExit() {
  // The last window, sent before the process ends (within the core's shutdown bound).
  if (fallbackMode) fallback.stop();
  native.stopNow();
}

// A signal that would end the process (no handler of the app's): the last window is sent,
// then the signal is raised again with its default action, so the process ends as it would
// have. When the app handles the signal itself, it decides; 'exit' sends the window then.
function onSignal(signal) {
  if (process.listenerCount(signal) > 1) return;
  process.removeListener(signal, onSignal);
  onExit();
  process.kill(process.pid, signal);
}

/** Starts CPU profiling (the agent). */
function startCpuProfiling() {
  const { options } = requireInit('start');
  nameInterpretedFrames();
  if (native.start(options)) log('debug', `pyroscope: profiling ${options.appName ?? process.env.PYROSCOPE_APPLICATION_NAME}`);
  if (fallbackMode && isMainThread) {
    // V8's sampler covers this thread; the core's timers keep the other threads.
    native.excludeThread();
    fallback.start(options.sampleRate ?? 100, options.uploadIntervalMs ?? 10000);
    log('warn', "pyroscope: fallback mode: JavaScript frames from V8's sampling profiler, without labels");
  } else {
    native.registerThread(!fallbackMode);
    native.sampleWallTime();
  }
  if (!exitHooked) {
    exitHooked = true;
    process.on('exit', onExit);
    for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(signal, onSignal);
  }
}

/** Stops profiling; the last window is sent. */
async function stopCpuProfiling() {
  if (fallbackMode) fallback.stop();
  await native.stop();
}

// Heap profiles (V8's sampling heap profiler) are not collected yet.
function startHeapProfiling() {
  requireInit('startHeapProfiling');
}

async function stopHeapProfiling() {}

function start() {
  startCpuProfiling();
  startHeapProfiling();
}

async function stop() {
  await Promise.all([stopCpuProfiling(), stopHeapProfiling()]);
}

function setLogger(l) {
  logger = l;
}

// A worker thread that loads the package is sampled and its code named, like the main thread;
// workers started from this one while profiling runs load it first (lib/workers.js).
if (!isMainThread && native.running()) {
  native.registerThread(!fallbackMode);
  native.sampleWallTime();
}
workers.install();

const api = {
  init,
  start,
  stop,
  wrapWithLabels: labels.wrapWithLabels,
  getLabels: labels.getLabels,
  setLabels: labels.setLabels,
  getWallLabels: labels.getLabels,
  setWallLabels: labels.setLabels,
  startWallProfiling: startCpuProfiling,
  stopWallProfiling: stopCpuProfiling,
  startCpuProfiling,
  stopCpuProfiling,
  startHeapProfiling,
  stopHeapProfiling,
  setLogger,
};

module.exports = { ...api, default: api };
