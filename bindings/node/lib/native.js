'use strict';
// Loads the native addon (index.node, built at install time by scripts/build.js) after
// checking that it was built for this Node: its V8 part is tied to one module ABI.

const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const addon = path.join(root, 'index.node');
const info = path.join(root, 'build-info.json');

function load() {
  if (!fs.existsSync(addon) || !fs.existsSync(info)) {
    throw new Error(
      `pyroscope: the native addon is not built (${addon} is missing): run \`node ${path.join(root, 'scripts', 'build.js')}\` ` +
        '(npm runs it at install; with npm\'s allowScripts on, allow this package\'s install script)',
    );
  }
  const built = JSON.parse(fs.readFileSync(info, 'utf8'));
  if (built.modules !== process.versions.modules) {
    throw new Error(
      `pyroscope: the native addon was built for Node ${built.node} (module ABI ${built.modules}) ` +
        `and this is Node ${process.version} (module ABI ${process.versions.modules}): ` +
        `rebuild it with \`node ${path.join(root, 'scripts', 'build.js')}\``,
    );
  }
  return require(addon);
}

module.exports = load();
