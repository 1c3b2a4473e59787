'use strict';
// Loaded first in every worker thread started while profiling runs (see lib/workers.js):
// loading the package registers the worker's thread (CPU timer, JIT names, label slot).
require('../index.js');
