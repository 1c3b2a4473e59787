#!/usr/bin/env node
'use strict';
// Builds the native addon with cargo (npm runs this at install) and puts it next to the
// package as index.node, with build-info.json naming the Node it was built for.
// PYROSCOPE_NODE_PROFILE=debug builds without optimizations (faster to build, for tests).

const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const profile = process.env.PYROSCOPE_NODE_PROFILE === 'debug' ? 'debug' : 'release';
const cargo = process.env.CARGO || 'cargo';

function fail(message) {
  process.stderr.write(`pyroscope: ${message}\n`);
  process.exit(1);
}

const args = ['build', '-p', 'pyroscope-node', '--manifest-path', path.join(root, 'Cargo.toml')];
if (profile === 'release') args.push('--release');
process.stderr.write(`pyroscope: building the native addon (cargo ${args.join(' ')}); the first build takes a few minutes\n`);
const build = spawnSync(cargo, args, {
  stdio: 'inherit',
  env: { ...process.env, PYROSCOPE_NODE: process.execPath },
});
if (build.error) fail(`cannot run cargo (${build.error.message}): install Rust (https://rustup.rs) and retry`);
if (build.status !== 0) fail(`cargo failed (exit ${build.status}); see its output above`);

const meta = spawnSync(cargo, ['metadata', '--format-version', '1', '--no-deps', '--manifest-path', path.join(root, 'Cargo.toml')], {
  encoding: 'utf8',
  maxBuffer: 64 << 20,
});
if (meta.status !== 0) fail(`cargo metadata failed: ${meta.stderr}`);
const targetDir = JSON.parse(meta.stdout).target_directory;
const lib = path.join(targetDir, profile, 'libpyroscope_node.so');
if (!fs.existsSync(lib)) fail(`cargo built no ${lib}`);
// Copy then rename: a running process that loaded the old file keeps its mapping intact.
const tmp = path.join(root, `index.node.${process.pid}`);
fs.copyFileSync(lib, tmp);
fs.renameSync(tmp, path.join(root, 'index.node'));
fs.writeFileSync(
  path.join(root, 'build-info.json'),
  `${JSON.stringify({ modules: process.versions.modules, node: process.version, profile }, null, 2)}\n`,
);
process.stderr.write(`pyroscope: built index.node for Node ${process.version} (${profile})\n`);
