'use strict';
// The logger of setLogger(): the package's own messages, and the core's (a failed upload, a
// label left out: warnings, each kind once per process), which come from the core's threads
// and are delivered on the main thread's event loop. No logger: nothing is printed, as in
// @pyroscope/nodejs.

const native = require('./native');
const { isMainThread } = require('./workers');

let logger = null;

/** Calls logger[level](message) if the logger has that level; never throws into the caller. */
function log(level, message) {
  if (logger === null || typeof logger[level] !== 'function') return;
  try {
    logger[level](message);
  } catch {
    // A logger that throws must not break profiling or the app.
  }
}

function setLogger(l) {
  logger = l === null || l === undefined ? null : l;
  // The core's records go to the main thread's loop (a weak handle: never keeps it alive).
  if (isMainThread()) native.setLogCallback(logger === null ? null : (level, message) => log(level, message));
}

module.exports = { log, setLogger };
