'use strict';
// Heap profiles of this thread's isolate: V8's sampling heap profiler, read on the JavaScript
// thread (the only one that may) and handed to the core, which sends it from its own thread
// as the `memory` profile of the window open at the read.
//
// In-use memory (the default, as @pyroscope/nodejs): the sampling session keeps live objects
// only and is never restarted; each read replaces this isolate's state in the open window.
// Allocations (heap.mode 'alloc'): the session keeps collected objects too and restarts at
// every read, so each read adds what was allocated since the one before. V8 runs one session
// per isolate, so a profile is one or the other.
//
// Reads run on an unref'd timer (it never keeps the process alive) set for shortly before the
// core closes its window, and once more at stop and at exit, before the last window closes.
// Worker threads follow the settings the main thread shares (native.heapShare): each samples
// its own isolate, and reads it before each window closes and when it exits.

const native = require('./native');
const { isMainThread } = require('./workers');

let settings = null;
let timer = null;

function schedule() {
  // No agent (not while heap profiling is on, but between a stop and a restart): look again
  // in a second.
  const delay = native.heapDelayMs() ?? 1000;
  timer = setTimeout(tick, delay);
  timer.unref();
}

function tick() {
  timer = null;
  // A worker stops when the main thread has.
  if (!isMainThread() && native.heapShared() === null) {
    stop();
    return;
  }
  // Pull mode alone sends no windows (`heapDelayMs()` is null): in-use memory is read when the
  // route asks; allocations still are read on time, which bounds V8's session.
  if (settings !== null && (native.heapDelayMs() !== null || settings.allocations)) collect();
  if (settings !== null) schedule();
}

/**
 * Starts sampling this thread's isolate with `options` ({ intervalBytes, stackDepth,
 * allocations }); false if another tool samples it. On the main thread, workers follow.
 */
function start(options) {
  if (!native.heapStart(options.intervalBytes, options.stackDepth, options.allocations)) return false;
  settings = options;
  if (isMainThread()) native.heapShare(options);
  if (timer === null) schedule();
  return true;
}

/** Hands the heap as it is now (or the allocations since the last read) to the open window. */
function collect() {
  if (settings === null) return null;
  const read = native.heapCollect();
  // null: another tool stopped the session (the inspector's HeapProfiler.stopSampling).
  if (read === null) stop();
  return read;
}

/** Reads once more (the open window gets the final state) and stops sampling. */
function stop() {
  if (timer !== null) clearTimeout(timer);
  timer = null;
  if (isMainThread()) native.heapShare(null);
  if (settings === null) return;
  native.heapCollect();
  settings = null;
  native.heapStop();
}

/** In a worker: follows the main thread's heap profiling, if on. */
function follow() {
  const shared = native.heapShared();
  if (shared === null || !start(shared)) return;
  process.on('exit', stop);
}

const running = () => settings !== null;

module.exports = { start, collect, stop, follow, running };
