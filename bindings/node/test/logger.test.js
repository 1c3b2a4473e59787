'use strict';
// setLogger: the package's messages and the core's warnings reach the logger; a logger that
// throws breaks nothing.

const test = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const net = require('node:net');

for (const k of Object.keys(process.env)) if (k.startsWith('PYROSCOPE_')) delete process.env[k];
const pyroscope = require('pyroscope-profiler').default;

function closedPort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function recorder() {
  const got = [];
  const logger = {};
  for (const level of ['error', 'trace', 'debug', 'info', 'warn', 'fatal']) logger[level] = (m) => got.push([level, m]);
  return { logger, got };
}

/** Resolves once `f()` holds, checking every 20 ms, at most `ms`. */
async function until(f, ms) {
  const end = Date.now() + ms;
  while (!f() && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  return f();
}

test('the middleware\'s errors, start, and the core\'s failed uploads reach the logger', async () => {
  const { logger, got } = recorder();
  pyroscope.setLogger(logger);
  const server = http.createServer((req, res) => pyroscope.expressMiddleware()(req, res, () => res.end('next')));
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${server.address().port}`;
  try {
    const res = await fetch(`${base}/debug/pprof/profile?seconds=1`);
    assert.equal(res.status, 503);
    assert.equal(await (await fetch(`${base}/other`)).text(), 'next');
    assert.deepEqual(got, [['error', 'pyroscope: /debug/pprof/profile: profiling is not configured: call init() first']]);

    // A logger that throws: the request is still answered.
    pyroscope.setLogger({
      error() {
        throw new Error('bad logger');
      },
    });
    assert.equal((await fetch(`${base}/debug/pprof/profile?seconds=1`)).status, 503);
  } finally {
    server.close();
    server.closeAllConnections();
  }

  got.length = 0;
  pyroscope.setLogger(logger);
  const port = await closedPort();
  pyroscope.init({ appName: 'logged', serverAddress: `http://127.0.0.1:${port}`, flushIntervalMs: 1000 });
  pyroscope.start();
  assert.deepEqual(got, [['debug', 'pyroscope: profiling logged']]);
  // Work to upload; the upload is refused; the core says so (from its own thread) once.
  const end = Date.now() + 300;
  while (Date.now() < end);
  const refused = (m) => new RegExp(`^pyroscope: sending to http://127\\.0\\.0\\.1:${port}/.*[Cc]onnection refused`).test(m);
  assert.ok(await until(() => got.some(([l, m]) => l === 'warn' && refused(m)), 20000), JSON.stringify(got));
  await pyroscope.stop();
  assert.equal(got.filter(([, m]) => refused(m)).length, 1, JSON.stringify(got));
});
