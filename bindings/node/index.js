'use strict';
// The @pyroscope/nodejs 0.6 API on the profiler's core: real CPU time sampled per thread by
// the core (a real-time signal), JavaScript frames named from V8's JIT code events, labels
// that follow async work, uploads from the core's own thread.

const v8 = require('node:v8');
const { isMainThread } = require('node:worker_threads');

const native = require('./lib/native');
const labels = require('./lib/labels');
const workers = require('./lib/workers');
const { log, setLogger } = require('./lib/logger');
const middleware = require('./lib/middleware');
const { SourceMapper } = require('./lib/sourcemapper');
const { checkConfig, getEnv, processConfig, nativeOptions } = require('./lib/config');
const { version } = require('./package.json');

let settings = null;
let exitHooked = false;

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

function onExit() {
  // The last window, sent before the process ends (within the core's shutdown bound).
  native.stopNow();
}

/** Starts CPU profiling (the agent). */
function startCpuProfiling() {
  const { options } = requireInit('start');
  nameInterpretedFrames();
  if (native.start(options)) log('debug', `pyroscope: profiling ${options.appName ?? process.env.PYROSCOPE_APPLICATION_NAME}`);
  native.registerThread();
  if (!exitHooked) {
    exitHooked = true;
    process.on('exit', onExit);
  }
}

/** Stops profiling; the last window is sent. */
async function stopCpuProfiling() {
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

// Pull mode: the routes answer from the running agent. The heap route needs a function
// resolving to a gzipped heap pprof; without one it answers 501.
const heapProfile = null;

function expressMiddleware() {
  return middleware.expressMiddleware(heapProfile);
}

function fastifyMiddleware() {
  return middleware.fastifyMiddleware(heapProfile);
}

// A worker thread that loads the package is sampled and its code named, like the main thread;
// workers started from this one while profiling runs load it first (lib/workers.js).
if (!isMainThread && native.running()) native.registerThread();
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
  expressMiddleware,
  fastifyMiddleware,
  SourceMapper,
};

module.exports = { ...api, default: api };
