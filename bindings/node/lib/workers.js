'use strict';
// Worker threads: each has its own isolate, whose JIT code only a call on that thread can
// name. A worker started while profiling runs loads lib/worker-entry.js first (one more
// `--require` in its execArgv), so its JavaScript frames are named and its labels work
// without a change to the app. Workers already inherit the entry when the process was
// started with `--require <pkg>/register` (or NODE_OPTIONS).
//
// For `require(pkg)`, the `Worker` class of node:worker_threads is wrapped, but that module
// (and the streams and message ports it loads, 1.5 MiB) is never loaded for it: the
// class is wrapped as soon as the app gets the module, through `require` (Module._load) or
// `process.getBuiltinModule`, or at once when it is loaded already (a worker; an ESM app whose
// static imports name it, linked before the package runs). Code that took `Worker` before
// that keeps the original, and so does a first `import('node:worker_threads')` after the
// package loaded (ESM loads builtins past Module._load): their workers are sampled without
// JavaScript names.

const path = require('node:path');
// The CommonJS loader's class, whose `_load` every `require` goes through: this module's own
// constructor. Public `node:module` (which loads the ESM loader and source maps, about 1 MiB of
// Node's embedded sources and heap) is loaded only when `Worker` is wrapped.
const Module = module.constructor;
const native = require('./native');

const entry = path.join(__dirname, 'worker-entry.js');
const IDS = new Set(['worker_threads', 'node:worker_threads']);
let hooked = false;
let wrapped = false;
// Workers started through the wrapped class (the 'worker' event comes after its constructor).
const throughWrapped = new WeakSet();
let watching = false;
let mainThread = null;
// The functions install() replaced, and its replacements: put back once `Worker` is wrapped
// (unless another tool replaced ours meanwhile: ours then only passes calls on).
let originalLoad = null;
let ourLoad = null;
let originalGetBuiltinModule = null;
let ourGetBuiltinModule = null;

/** Whether node:worker_threads is loaded in this thread (by anyone, CJS or ESM). */
function loaded() {
  return process.moduleLoadList.includes('NativeModule worker_threads');
}

/**
 * Whether this is the main thread (not a worker), without loading node:worker_threads into a
 * process that does not use it: a worker always has it loaded; the main thread of `node` is
 * the process's first thread.
 */
function isMainThread() {
  if (mainThread === null) mainThread = loaded() ? require('node:worker_threads').isMainThread : native.isMainThread();
  return mainThread;
}

function withEntry(options) {
  const o = options === undefined || options === null ? {} : options;
  if (typeof o !== 'object') return undefined;
  const execArgv = Array.isArray(o.execArgv) ? o.execArgv : process.execArgv;
  if (execArgv.includes(entry)) return undefined;
  return { ...o, execArgv: [...execArgv, '--require', entry] };
}

/** Wraps `Worker` of the module `workerThreads` (once). */
function wrap(workerThreads) {
  if (wrapped) return;
  wrapped = true;
  const Worker = workerThreads.Worker;
  workerThreads.Worker = new Proxy(Worker, {
    construct(target, args, newTarget) {
      const options = native.running() ? withEntry(args[1]) : undefined;
      let worker = null;
      if (options !== undefined) {
        try {
          worker = Reflect.construct(target, [args[0], options, ...args.slice(2)], newTarget);
        } catch (e) {
          // An execArgv the worker refuses (e.g. an inherited process-only flag): the worker
          // starts exactly as the app asked, only sampled without JIT names.
          if (e === null || typeof e !== 'object' || e.code !== 'ERR_WORKER_INVALID_EXEC_ARGV') throw e;
        }
      }
      if (worker === null) worker = Reflect.construct(target, args, newTarget);
      throughWrapped.add(worker);
      return worker;
    },
  });
  // ESM `import { Worker } from 'node:worker_threads'` sees the same class.
  require('node:module').syncBuiltinESMExports();
  if (ourLoad !== null && Module._load === ourLoad) Module._load = originalLoad;
  if (ourGetBuiltinModule !== null && process.getBuiltinModule === ourGetBuiltinModule) {
    process.getBuiltinModule = originalGetBuiltinModule;
  }
}

/** Wraps `Worker` now if node:worker_threads is loaded; true once it is wrapped. */
function wrapIfLoaded() {
  if (!wrapped && loaded()) wrap(require('node:worker_threads'));
  return wrapped;
}

/**
 * Wraps `Worker` now (loading node:worker_threads): for `--require <pkg>/register`, which
 * runs before an ESM app links its imports.
 */
function wrapNow() {
  wrap(require('node:worker_threads'));
}

/** Wraps `Worker` when the app first gets node:worker_threads (at once if it has it). */
function install() {
  if (hooked || wrapIfLoaded()) return;
  hooked = true;
  const load = Module._load;
  originalLoad = load;
  ourLoad = function _load(request, ...rest) {
    const exports = Reflect.apply(load, this, [request, ...rest]);
    if (!wrapped && IDS.has(request)) wrap(exports);
    return exports;
  };
  Module._load = ourLoad;
  const getBuiltinModule = process.getBuiltinModule;
  if (typeof getBuiltinModule === 'function') {
    originalGetBuiltinModule = getBuiltinModule;
    ourGetBuiltinModule = function getBuiltinModule_(id, ...rest) {
      const exports = Reflect.apply(getBuiltinModule, this, [id, ...rest]);
      if (!wrapped && IDS.has(id) && exports !== undefined) wrap(exports);
      return exports;
    };
    process.getBuiltinModule = ourGetBuiltinModule;
  }
}

/**
 * Calls `warn(message)` once, the first time a worker starts while profiling runs from a
 * `Worker` class that is not the wrapped one (taken from node:worker_threads before the package
 * was loaded): its JavaScript frames are not named.
 */
function warnUnwrapped(warn) {
  if (watching) return;
  watching = true;
  const onWorker = (worker) => {
    // Node's own workers (module.register()'s loader hooks thread) are not the app's.
    if (throughWrapped.has(worker) || !native.running() || worker.constructor.name === 'InternalWorker') return;
    process.removeListener('worker', onWorker);
    warn(
      'pyroscope: a worker was started from a Worker class taken from node:worker_threads before ' +
        'pyroscope-profiler was loaded: its CPU time is profiled, its JavaScript frames are not ' +
        'named (unless it loads pyroscope-profiler itself). Require pyroscope-profiler first, or ' +
        'start node with --require pyroscope-profiler/register.',
    );
  };
  process.on('worker', onWorker);
}

module.exports = { install, wrapIfLoaded, wrapNow, isMainThread, warnUnwrapped };
