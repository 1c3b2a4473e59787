'use strict';
// Where profiles go and under which name: init's config over PYROSCOPE_* variables, and
// PYROSCOPE_ADHOC_SERVER_ADDRESS over both, as @pyroscope/nodejs has it.

const test = require('node:test');
const assert = require('node:assert/strict');
const { startReceiver, run, cpuProfiles } = require('./helpers');

async function receivers(n) {
  return Promise.all(Array.from({ length: n }, () => startReceiver()));
}

/** Runs the app; returns the service names each receiver got profiles for. */
async function names(rs, env) {
  const res = await run(['test/fixtures/config-app.js'], env);
  await Promise.all(rs.map((r) => r.close()));
  assert.equal(res.code, 0, res.stderr);
  assert.equal(res.stderr, '');
  return rs.map((r) => [...new Set(cpuProfiles(r).map((p) => p.labels.service_name))]);
}

test('config wins over PYROSCOPE_* variables', async () => {
  const [a, b] = await receivers(2);
  const got = await names([a, b], {
    CONFIG_APP: 'from-config',
    CONFIG_SERVER: a.url,
    PYROSCOPE_APPLICATION_NAME: 'from-env',
    PYROSCOPE_SERVER_ADDRESS: b.url,
  });
  assert.deepEqual(got, [['from-config'], []]);
});

test('PYROSCOPE_* variables apply where the config is silent', async () => {
  const [a, b] = await receivers(2);
  const got = await names([a, b], { CONFIG_SERVER: a.url, PYROSCOPE_APPLICATION_NAME: 'from-env', PYROSCOPE_SERVER_ADDRESS: b.url });
  assert.deepEqual(got, [['from-env'], []]);
  const [c] = await receivers(1);
  assert.deepEqual(await names([c], { PYROSCOPE_APPLICATION_NAME: 'env-only', PYROSCOPE_SERVER_ADDRESS: c.url }), [['env-only']]);
});

test('PYROSCOPE_ADHOC_SERVER_ADDRESS wins over config and PYROSCOPE_SERVER_ADDRESS', async () => {
  const [a, b, c] = await receivers(3);
  const got = await names([a, b, c], {
    CONFIG_APP: 'from-config',
    CONFIG_SERVER: a.url,
    PYROSCOPE_SERVER_ADDRESS: b.url,
    PYROSCOPE_ADHOC_SERVER_ADDRESS: c.url,
  });
  assert.deepEqual(got, [[], [], ['from-config']]);
});
