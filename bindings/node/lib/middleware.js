'use strict';
// Pull mode, as @pyroscope/nodejs's expressMiddleware() and fastifyMiddleware():
//   GET /debug/pprof/profile?seconds=N  a gzipped pprof of the CPU samples of the next N
//                                       seconds (30 by default, as Go's net/http/pprof), taken
//                                       by the running agent beside its uploads, which go on;
//   GET /debug/pprof/heap               the heap profile, where heap profiling is available.
// Without start(), the first request starts profiling that uploads nothing (index.js,
// runForPull). The capture runs off the event loop; the response waits for it.

const native = require('./native');
const { log } = require('./logger');

const DEFAULT_SECONDS = 30;
const MAX_SECONDS = 3600;

/** [status, body] of a request that gets no profile, or null for a good `seconds`. */
function badSeconds(raw) {
  if (raw === undefined || raw === '') return null;
  const s = Number(raw);
  if (!Number.isFinite(s) || s < 0 || s > MAX_SECONDS) {
    return [400, `pyroscope: seconds must be a number from 0 to ${MAX_SECONDS}, not ${JSON.stringify(String(raw))}\n`];
  }
  return null;
}

const seconds = (raw) => (raw === undefined || raw === '' ? DEFAULT_SECONDS : Number(raw));

/** The status for an error of the capture. */
function statusOf(e) {
  if (!native.running()) return 503;
  return /too many CPU captures/.test(e.message) ? 429 : 500;
}

/** The answer of a route that cannot answer now, and why. */
function unavailable(route, why) {
  log('error', `pyroscope: ${route}: ${why}`);
  return { status: 503, type: 'text/plain; charset=utf-8', body: `pyroscope: ${why}\n` };
}

/**
 * The two handlers over plain values, for both frameworks: each resolves to
 * { status, type, body }.
 * `heapProfile`: () => Promise<Buffer> of a gzipped heap pprof, or null where heap profiles
 * are not available (then 501).
 * `ready(heapToo)`: makes sure profiling runs (heap profiling too when `heapToo`); null when
 * the route can answer, else why it cannot (then 503).
 */
function handlers(heapProfile, ready) {
  async function profile(rawSeconds) {
    const bad = badSeconds(rawSeconds);
    if (bad !== null) return { status: bad[0], type: 'text/plain; charset=utf-8', body: bad[1] };
    const why = ready(false);
    if (why !== null) return unavailable('/debug/pprof/profile', why);
    const s = seconds(rawSeconds);
    log('debug', `pyroscope: capturing a ${s} s CPU profile for /debug/pprof/profile`);
    try {
      const body = await native.captureCpu(Math.round(s * 1000));
      return { status: 200, type: 'application/octet-stream', body };
    } catch (e) {
      log('error', `pyroscope: /debug/pprof/profile: ${e.message}`);
      return { status: statusOf(e), type: 'text/plain; charset=utf-8', body: `${e.message}\n` };
    }
  }

  async function heap() {
    if (heapProfile === null) {
      return {
        status: 501,
        type: 'text/plain; charset=utf-8',
        body: 'pyroscope: heap profiles are not available in this build of the package\n',
      };
    }
    const why = ready(true);
    if (why !== null) return unavailable('/debug/pprof/heap', why);
    try {
      return { status: 200, type: 'application/octet-stream', body: await heapProfile() };
    } catch (e) {
      log('error', `pyroscope: /debug/pprof/heap: ${e.message}`);
      return { status: e.status ?? 500, type: 'text/plain; charset=utf-8', body: `${e.message}\n` };
    }
  }

  return { profile, heap };
}

function pathAndQuery(req) {
  const url = new URL(req.url, 'http://localhost');
  return { path: req.path ?? url.pathname, seconds: req.query?.seconds ?? url.searchParams.get('seconds') ?? undefined };
}

/** Express (and connect-style) middleware; other requests go on to next(). */
function expressMiddleware(heapProfile, ready) {
  const h = handlers(heapProfile, ready);
  return function pyroscopeMiddleware(req, res, next) {
    if (req.method !== 'GET') return next();
    const { path, seconds: raw } = pathAndQuery(req);
    let answer;
    if (path === '/debug/pprof/profile') answer = h.profile(raw);
    else if (path === '/debug/pprof/heap') answer = h.heap();
    else return next();
    answer
      .then(({ status, type, body }) => {
        res.statusCode = status;
        res.setHeader('Content-Type', type);
        if (status === 200) res.setHeader('Content-Disposition', 'attachment; filename="profile"');
        res.end(body);
      })
      // Answered meanwhile by someone else: the framework's error handling takes it.
      .catch(next);
  };
}

/** A Fastify plugin with the two routes. */
function fastifyMiddleware(heapProfile, ready) {
  const h = handlers(heapProfile, ready);
  const reply = (r, { status, type, body }) => r.code(status).type(type).send(body);
  return function pyroscopePlugin(fastify, _options, done) {
    fastify.get('/debug/pprof/profile', async (request, r) => reply(r, await h.profile(request.query?.seconds)));
    fastify.get('/debug/pprof/heap', async (_request, r) => reply(r, await h.heap()));
    done();
  };
}

module.exports = { expressMiddleware, fastifyMiddleware };
