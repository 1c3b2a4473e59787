'use strict';
// Worker threads: each has its own isolate, whose JIT code only a call on that thread can
// name. A worker started while profiling runs loads lib/worker-entry.js first (one more
// `--require` in its execArgv), so its JavaScript frames are named and its labels work
// without a change to the app. Workers already inherit the entry when the process was
// started with `--require <pkg>/register` (or NODE_OPTIONS). For `require(pkg)`, the
// `Worker` class is wrapped when the package loads: code that took `Worker` from
// worker_threads before that keeps the original, and its workers are sampled without
// JavaScript names.

const path = require('node:path');
const { syncBuiltinESMExports } = require('node:module');
const workerThreads = require('node:worker_threads');
const native = require('./native');

const entry = path.join(__dirname, 'worker-entry.js');
let installed = false;

function withEntry(options) {
  const o = options === undefined || options === null ? {} : options;
  if (typeof o !== 'object') return undefined;
  const execArgv = Array.isArray(o.execArgv) ? o.execArgv : process.execArgv;
  if (execArgv.includes(entry)) return undefined;
  return { ...o, execArgv: [...execArgv, '--require', entry] };
}

function install() {
  if (installed) return;
  installed = true;
  const Worker = workerThreads.Worker;
  workerThreads.Worker = new Proxy(Worker, {
    construct(target, args, newTarget) {
      const options = native.running() ? withEntry(args[1]) : undefined;
      if (options !== undefined) {
        try {
          return Reflect.construct(target, [args[0], options, ...args.slice(2)], newTarget);
        } catch (e) {
          // An execArgv the worker refuses (e.g. an inherited process-only flag): the worker
          // starts exactly as the app asked, only sampled without JIT names.
          if (e === null || typeof e !== 'object' || e.code !== 'ERR_WORKER_INVALID_EXEC_ARGV') throw e;
        }
      }
      return Reflect.construct(target, args, newTarget);
    },
  });
  // ESM `import { Worker } from 'node:worker_threads'` sees the same class.
  syncBuiltinESMExports();
}

module.exports = { install };
