'use strict';
// The options of @pyroscope/nodejs 0.6 (`init(config)`) and its PYROSCOPE_* variables: the
// same checks and messages, the same precedence (config, then environment, except
// PYROSCOPE_ADHOC_SERVER_ADDRESS, which wins over both), then the settings of the core.

const INVALID_LABEL_CHARACTERS = ['{', '}', ',', '='];
const INVALID_LABEL_CHARACTERS_MESSAGE = "'{', '}', ',', or '=' characters";

const DEFAULTS = {
  appName: '',
  serverAddress: 'http://localhost:4040',
  flushIntervalMs: 60000,
  samplingDurationMs: 60000,
  samplingIntervalMicros: 10000,
  samplingIntervalBytes: 512 * 1024,
  stackDepth: 64,
};

const isObject = (o) => o !== null && typeof o === 'object';
const hasInvalidLabelCharacters = (s) => INVALID_LABEL_CHARACTERS.some((c) => s.includes(c));
const optional = (v, type) => v === undefined || typeof v === type;
const optionalInteger = (v) => v === undefined || (typeof v === 'number' && Number.isInteger(v));

/** Throws `Error('Invalid config: ...')` listing every problem, as @pyroscope/nodejs does. */
function checkConfig(config) {
  if (!isObject(config)) throw new Error('Expecting an object config');
  const errors = [];
  if (!optional(config.appName, 'string')) {
    errors.push('Expecting a config with string appName');
  } else if (config.appName !== undefined && hasInvalidLabelCharacters(config.appName)) {
    errors.push(`appName must not contain ${INVALID_LABEL_CHARACTERS_MESSAGE}`);
  }
  if (config.tags !== undefined) {
    if (!isObject(config.tags)) {
      errors.push('Expecting a config with object tags');
    } else {
      for (const [key, value] of Object.entries(config.tags)) {
        if (hasInvalidLabelCharacters(key)) {
          errors.push(`tag key "${key}" must not contain ${INVALID_LABEL_CHARACTERS_MESSAGE}`);
        }
        if (typeof value === 'string' && hasInvalidLabelCharacters(value)) {
          errors.push(`tag value "${value}" for key "${key}" must not contain ${INVALID_LABEL_CHARACTERS_MESSAGE}`);
        } else if (typeof value !== 'number' && typeof value !== 'string') {
          errors.push(`tag value "${String(value)}" for key "${key}" must be a string or number`);
        }
      }
    }
  }
  if (!optional(config.authToken, 'string')) errors.push('Expecting a config with string auth token');
  if (!optionalInteger(config.flushIntervalMs)) errors.push('Expecting a config with integer flush interval');
  if (config.heap !== undefined) {
    const h = config.heap;
    if (!isObject(h) || !optional(h.samplingIntervalBytes, 'number') || !optional(h.stackDepth, 'number')) {
      errors.push('Expecting a config with valid memory options');
    } else if (![undefined, 'inuse', 'alloc'].includes(h.mode)) {
      errors.push("Expecting a config with heap.mode set to 'inuse' or 'alloc'");
    }
  }
  if (!optional(config.serverAddress, 'string')) errors.push('Expecting a config with string serverAddress');
  if (config.wall !== undefined) {
    const w = config.wall;
    if (!isObject(w) || !optionalInteger(w.samplingDurationMs) || !optionalInteger(w.samplingIntervalMicros)) {
      errors.push('Expecting a config with valid wall options');
    }
  }
  if (![undefined, 'all', 'dependencies'].includes(config.stripFilenames)) {
    errors.push("Expecting a config with stripFilenames set to 'all' or 'dependencies'");
  }
  if (!optional(config.shortenPaths, 'boolean')) errors.push('Expecting a config with boolean shortenPaths');
  if (![undefined, true, false, 'all'].includes(config.asyncLabels)) {
    errors.push("Expecting a config with asyncLabels set to true, false or 'all'");
  }
  if (errors.length > 0) throw new Error(`Invalid config:\n\n${errors.join('\n')}`);
}

const numeric = (v) => (v === undefined ? undefined : Number(v));
const boolean = (v) => (v === undefined ? undefined : v === 'true' || v === '1');

/** The PYROSCOPE_* variables of @pyroscope/nodejs 0.6, plus PYROSCOPE_ASYNC_LABELS (true, false, all) and PYROSCOPE_HEAP_MODE. */
function getEnv(env = process.env) {
  const strip = env.PYROSCOPE_STRIP_FILENAMES;
  return {
    adhocServerAddress: env.PYROSCOPE_ADHOC_SERVER_ADDRESS,
    appName: env.PYROSCOPE_APPLICATION_NAME,
    authToken: env.PYROSCOPE_AUTH_TOKEN,
    flushIntervalMs: numeric(env.PYROSCOPE_FLUSH_INTERVAL_MS),
    heapSamplingIntervalBytes: numeric(env.PYROSCOPE_HEAP_SAMPLING_INTERVAL_BYTES),
    heapStackDepth: numeric(env.PYROSCOPE_HEAP_STACK_DEPTH),
    heapMode: ['inuse', 'alloc'].includes(env.PYROSCOPE_HEAP_MODE) ? env.PYROSCOPE_HEAP_MODE : undefined,
    serverAddress: env.PYROSCOPE_SERVER_ADDRESS,
    wallSamplingDurationMs: numeric(env.PYROSCOPE_WALL_SAMPLING_DURATION_MS),
    wallSamplingIntervalMicros: numeric(env.PYROSCOPE_WALL_SAMPLING_INTERVAL_MICROS),
    wallCollectCpuTime: boolean(env.PYROSCOPE_WALL_COLLECT_CPU_TIME),
    stripFilenames: strip === 'all' || strip === 'dependencies' ? strip : undefined,
    shortenPaths: boolean(env.PYROSCOPE_SHORTEN_PATHS),
    asyncLabels: env.PYROSCOPE_ASYNC_LABELS === 'all' ? 'all' : boolean(env.PYROSCOPE_ASYNC_LABELS || undefined),
  };
}

/** The config merged with the environment, as @pyroscope/nodejs's processConfig. */
function processConfig(config, env) {
  return {
    appName: config.appName ?? env.appName,
    authToken: config.authToken ?? env.authToken,
    flushIntervalMs: config.flushIntervalMs ?? env.flushIntervalMs,
    heap: {
      samplingIntervalBytes: config.heap?.samplingIntervalBytes ?? env.heapSamplingIntervalBytes,
      stackDepth: config.heap?.stackDepth ?? env.heapStackDepth,
      mode: config.heap?.mode ?? env.heapMode,
    },
    serverAddress: env.adhocServerAddress ?? config.serverAddress ?? env.serverAddress,
    tags: config.tags,
    wall: {
      samplingDurationMs: config.wall?.samplingDurationMs ?? env.wallSamplingDurationMs,
      samplingIntervalMicros: config.wall?.samplingIntervalMicros ?? env.wallSamplingIntervalMicros,
      collectCpuTime: config.wall?.collectCpuTime ?? env.wallCollectCpuTime,
    },
    sourceMapper: config.sourceMapper,
    basicAuthUser: config.basicAuthUser,
    basicAuthPassword: config.basicAuthPassword,
    tenantID: config.tenantID,
    stripFilenames: config.stripFilenames ?? env.stripFilenames,
    shortenPaths: config.shortenPaths ?? env.shortenPaths,
    asyncLabels: config.asyncLabels ?? env.asyncLabels ?? true,
  };
}

const stringValues = (o) => Object.fromEntries(Object.entries(o ?? {}).map(([k, v]) => [k, String(v)]));

/**
 * The core's settings for a processed config. `undefined` leaves a setting to the core's own
 * PYROSCOPE_* variable (PYROSCOPE_EXPORT_DIR writes files instead of uploading), then to its
 * default. The sample rate comes from wall.samplingIntervalMicros (100 Hz by default).
 */
function nativeOptions(c, version) {
  const interval = c.wall.samplingIntervalMicros;
  if (interval !== undefined && !(interval >= 1000 && interval <= 1000000)) {
    throw new Error(
      `Invalid config: wall.samplingIntervalMicros ${interval} must be between 1000 (1 kHz) and 1000000 (1 Hz)`,
    );
  }
  const o = {
    appName: c.appName,
    serverAddress: c.serverAddress,
    authToken: c.authToken,
    basicAuthUser: c.basicAuthUser,
    basicAuthPassword: c.basicAuthPassword,
    tenantId: c.tenantID,
    tags: stringValues(c.tags),
    runtimeTags: {
      'otel.scope.name': 'com.grafana.pyroscope/nodejs',
      'otel.scope.version': version,
      'process.runtime.name': 'nodejs',
      'process.runtime.version': process.versions.node,
    },
    uploadIntervalMs: c.flushIntervalMs,
    sampleRate: interval === undefined ? undefined : Math.round(1e6 / interval),
  };
  // The peer's default server address applies only when neither it nor the core's variables
  // (PYROSCOPE_SERVER_ADDRESS, PYROSCOPE_EXPORT_DIR) say where profiles go.
  if (o.serverAddress === undefined && process.env.PYROSCOPE_EXPORT_DIR === undefined) {
    o.serverAddress = DEFAULTS.serverAddress;
  }
  if (o.appName === undefined && process.env.PYROSCOPE_APPLICATION_NAME === undefined) o.appName = DEFAULTS.appName;
  if (o.uploadIntervalMs === undefined && process.env.PYROSCOPE_UPLOAD_INTERVAL === undefined) {
    o.uploadIntervalMs = DEFAULTS.flushIntervalMs;
  }
  for (const k of Object.keys(o)) if (o[k] === undefined) delete o[k];
  return o;
}

/**
 * The heap profiler's settings for a processed config: V8's sampling interval (bytes, 512 KiB
 * by default), stack depth (64) and whether to profile allocations ('alloc') instead of
 * in-use memory ('inuse', the default, as @pyroscope/nodejs).
 */
function heapOptions(c) {
  const intervalBytes = c.heap.samplingIntervalBytes ?? DEFAULTS.samplingIntervalBytes;
  const stackDepth = c.heap.stackDepth ?? DEFAULTS.stackDepth;
  if (!(Number.isInteger(intervalBytes) && intervalBytes >= 1 && intervalBytes <= 0xffffffff)) {
    throw new Error(
      `Invalid config: heap.samplingIntervalBytes ${intervalBytes} must be an integer between 1 and 4294967295`,
    );
  }
  if (!(Number.isInteger(stackDepth) && stackDepth >= 1 && stackDepth <= 1024)) {
    throw new Error(`Invalid config: heap.stackDepth ${stackDepth} must be an integer between 1 and 1024`);
  }
  return { intervalBytes, stackDepth, allocations: c.heap.mode === 'alloc' };
}

module.exports = { checkConfig, getEnv, processConfig, nativeOptions, heapOptions, DEFAULTS };
