'use strict';
// index.d.ts as TypeScript users get it: an app using the whole API, in CommonJS and ESM,
// type-checks with tsc --strict, and misuses marked @ts-expect-error are refused
// (test/types/).

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { pkg } = require('./helpers');

test('a TypeScript app using the whole API type-checks against index.d.ts (tsc --strict)', () => {
  const tsc = require.resolve('typescript/bin/tsc');
  const res = spawnSync(process.execPath, [tsc, '-p', path.join(pkg, 'test', 'types', 'tsconfig.json')], {
    cwd: pkg,
    encoding: 'utf8',
    timeout: 120000,
  });
  assert.equal(res.status, 0, `tsc:\n${res.stdout}${res.stderr}`);
});
