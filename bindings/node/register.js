'use strict';
// `node --require pyroscope-profiler/register app.js` (or in NODE_OPTIONS): profiles the app
// with no code change, configured by the PYROSCOPE_* variables alone. A bad configuration is
// reported on stderr and the app runs unprofiled.

const pyroscope = require('./index.js');

try {
  pyroscope.init();
  pyroscope.start();
  // An ESM app links its imports after this preload, past the hooks that wrap `Worker` when
  // the app gets node:worker_threads (lib/workers.js): wrap it now.
  require('./lib/workers').wrapNow();
} catch (e) {
  process.stderr.write(`pyroscope: not profiling: ${e.message}\n`);
}
