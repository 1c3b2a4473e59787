'use strict';
// The @pyroscope/nodejs 0.6 API on the profiler's core: real CPU time sampled per thread by
// the core (a real-time signal), JavaScript frames named from V8's JIT code events, labels
// that follow async work, heap profiles from V8's sampling heap profiler, uploads from the
// core's own thread.

const native = require('./lib/native');
const heap = require('./lib/heap');
const labels = require('./lib/labels');
const workers = require('./lib/workers');
const { log, setLogger } = require('./lib/logger');
const middleware = require('./lib/middleware');
const { SourceMapper, activate: activateSourceMapper } = require('./lib/sourcemapper');
const { checkConfig, getEnv, processConfig, nativeOptions, heapOptions } = require('./lib/config');
const { version } = require('./package.json');

let settings = null;
let exitHooked = false;
// Whether the agent that runs samples CPU (heap profiling alone runs one that does not).
let agentCpu = false;
let cpuOn = false;

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
  const heapSettings = heapOptions(processed);
  labels.configure({ async: processed.asyncLabels });
  native.setPaths(processed.stripFilenames ?? null, processed.shortenPaths === true);
  if (processed.sourceMapper !== undefined && processed.sourceMapper !== null && !activateSourceMapper(processed.sourceMapper)) {
    log('warn', 'pyroscope: sourceMapper is not a SourceMapper of this package (make it with SourceMapper.create): frames are not mapped');
  }
  settings = { processed, options, heap: heapSettings };
}

// Fallback mode: no JIT code names in this build (or PYROSCOPE_NODE_FALLBACK=1); JavaScript
// frames then come from V8's sampling profiler (lib/fallback.js, loaded only then: it needs
// node:inspector).
const fallbackMode = !native.jitNamesAvailable() || process.env.PYROSCOPE_NODE_FALLBACK === '1';
const fallback = fallbackMode ? require('./lib/fallback') : null;

function onExit() {
  // The last window, with the heap as it is now, sent before the process ends (within the
  // core's shutdown bound).
  if (fallbackMode) fallback.stop();
  heap.stop();
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

function hookExit() {
  if (!exitHooked) {
    exitHooked = true;
    process.on('exit', onExit);
    for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(signal, onSignal);
  }
}

// Pull mode without start(): @pyroscope/nodejs's middleware profiles on its own, so an app
// that only serves /debug/pprof/* gets profiles. The routes' first request starts profiling
// that uploads nothing (CPU, and the heap from the first heap request on), which runs until
// stop() (a later request starts it again); start(), startCpuProfiling() or
// startHeapProfiling() replace it with the configured profiling.
let pullOnly = false;
// Whether the warning that another tool holds V8's heap sampler was given.
let heapBusyWarned = false;

// Starts the agent: with CPU sampling, or for heap profiles alone.
function startAgent(options, cpu) {
  const o = { ...options };
  if (!cpu) o.cpu = false;
  if (pullOnly) o.pullOnly = true;
  const started = native.start(o);
  if (started) {
    agentCpu = cpu;
    const name = options.appName ?? process.env.PYROSCOPE_APPLICATION_NAME;
    log('debug', `pyroscope: profiling ${name}${pullOnly ? ' for pull mode only (no uploads)' : ''}`);
  }
  hookExit();
}

/** Ends pull-only profiling, before the app's own start. */
function leavePullOnly() {
  if (!pullOnly) return;
  pullOnly = false;
  cpuOn = false;
  if (fallbackMode) fallback.stop();
  heap.stop();
  native.stopNow();
}

/**
 * Before a pull-mode request is answered: makes sure profiling runs, starting profiling that
 * uploads nothing when the app's own does not (heap profiling too when `heapToo`). Null when
 * the route can answer, else why it cannot.
 */
function runForPull(heapToo) {
  if (settings === null) return 'profiling is not configured: call init() first';
  // No agent, or pull-only profiling left without CPU sampling by stopCpuProfiling().
  if (!native.running() || (pullOnly && !cpuOn)) {
    pullOnly = true;
    startCpu();
  }
  if (!native.running()) return 'profiling could not start (a stop() may still be finishing): try again';
  if (!heapToo && !cpuOn) return 'CPU profiling is off: start() or startCpuProfiling() turns it on';
  if (heapToo && pullOnly && !heap.running()) startHeap();
  if (heapToo && !heap.running()) {
    return pullOnly
      ? "this thread's sampling heap profiler is in use by another tool"
      : 'heap profiling is off: start() or startHeapProfiling() turns it on';
  }
  return null;
}

/** Starts CPU profiling (the agent). */
function startCpuProfiling() {
  requireInit('start');
  leavePullOnly();
  startCpu();
}

function startCpu() {
  const { options } = settings;
  // Interpreted functions get a frame of their own (a copy of the interpreter's entry) from
  // now on; functions interpreted before keep the shared one until V8 compiles them.
  native.nameInterpretedFrames();
  if (native.running() && !agentCpu) {
    // The agent runs for heap profiles only: restart it with CPU sampling. Its last window,
    // with the heap as it is now, is sent first (this call waits for that, within the core's
    // shutdown bound).
    heap.collect();
    native.stopNow();
  }
  if (!native.running()) startAgent(options, true);
  cpuOn = true;
  // node:worker_threads loaded past our hooks (a dynamic import): its workers load the
  // package from now on.
  workers.wrapIfLoaded();
  if (!fallbackMode && workers.isMainThread()) workers.warnUnwrapped((message) => log('warn', message));
  if (fallbackMode && workers.isMainThread()) {
    // V8's sampler covers this thread; the core's timers keep the other threads.
    native.excludeThread();
    fallback.start(options.sampleRate ?? 100, options.uploadIntervalMs ?? 10000);
    log('warn', "pyroscope: fallback mode: JavaScript frames from V8's sampling profiler, without labels");
  } else {
    native.registerThread(!fallbackMode);
    // Captures are CPU profiles: pull-only profiling samples no wall time.
    if (!pullOnly) native.sampleWallTime();
  }
}

/** Stops CPU profiling; the last window is sent. Heap profiling, if on, goes on. */
async function stopCpuProfiling() {
  cpuOn = false;
  if (fallbackMode) fallback.stop();
  if (!heap.running()) {
    await native.stop();
    return;
  }
  heap.collect();
  await native.stop();
  if (heap.running() && !cpuOn && !native.running()) startAgent(settings.options, false);
}

/**
 * Starts heap profiling (V8's sampling heap profiler on this thread): in-use memory, or
 * allocations with heap.mode 'alloc'. Starts the agent without CPU sampling if none runs.
 */
function startHeapProfiling() {
  requireInit('startHeapProfiling');
  leavePullOnly();
  startHeap();
}

function startHeap() {
  const { options, heap: heapSettings } = settings;
  if (!native.running()) startAgent(options, false);
  if (!native.jitNamesAvailable()) {
    log('warn', 'pyroscope: no heap profiles: the addon was built without its C++ part (fallback mode)');
  } else if (!heap.start(heapSettings) && !heapBusyWarned) {
    heapBusyWarned = true;
    log('warn', "pyroscope: no heap profiles: this isolate's sampling heap profiler is in use by another tool");
  }
}

/** Stops heap profiling; its last state goes into the open window. */
async function stopHeapProfiling() {
  heap.stop();
  if (!cpuOn) await native.stop();
}

function start() {
  startCpuProfiling();
  startHeapProfiling();
}

/** Stops profiling; the last window, with the heap as it is now, is sent. */
async function stop() {
  pullOnly = false;
  cpuOn = false;
  if (fallbackMode) fallback.stop();
  heap.stop();
  await native.stop();
}

// Pull mode: the routes answer from the running agent, or from pull-only profiling they start
// (runForPull). The heap route needs a function resolving to a gzipped heap pprof; without
// one it answers 501.
// /debug/pprof/heap: the main thread's heap as it is now (503 when heap profiling cannot run
// here; 501 in fallback builds, which have no heap profiler).
const heapProfile = native.jitNamesAvailable()
  ? () => {
      const pprof = native.heapPprof();
      if (pprof !== null) return Promise.resolve(pprof);
      const e = new Error('pyroscope: heap profiling is not running');
      e.status = 503;
      return Promise.reject(e);
    }
  : null;

function expressMiddleware() {
  return middleware.expressMiddleware(heapProfile, runForPull);
}

function fastifyMiddleware() {
  return middleware.fastifyMiddleware(heapProfile, runForPull);
}

// A worker thread that loads the package is sampled, its code named and its heap profiled,
// like the main thread; workers started from this one while profiling runs load it first
// (lib/workers.js: `Worker` is wrapped once the app gets node:worker_threads).
if (!workers.isMainThread() && native.running()) {
  native.registerThread(!fallbackMode);
  native.sampleWallTime();
  heap.follow();
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
  expressMiddleware,
  fastifyMiddleware,
  SourceMapper,
};

module.exports = { ...api, default: api };
