// Types of the package: the @pyroscope/nodejs 0.6 API.

export type LabelSet = Record<string, string | number>;
/** @deprecated use LabelSet */
export type TagList = LabelSet;

export interface PyroscopeWallConfig {
  /** Accepted for compatibility; profiles are cut every flushIntervalMs. */
  samplingDurationMs?: number | undefined;
  /** Sampling period in microseconds (10000: 100 Hz, the default; 1000 to 1000000). */
  samplingIntervalMicros?: number | undefined;
  /** Accepted for compatibility: CPU time is always profiled. */
  collectCpuTime?: boolean | undefined;
}

export interface PyroscopeHeapConfig {
  /** Mean bytes allocated between two samples of V8's sampling heap profiler (524288). */
  samplingIntervalBytes?: number | undefined;
  /** Frames kept per sampled stack, leaf first (64; 1 to 1024). */
  stackDepth?: number | undefined;
  /**
   * 'inuse' (the default): memory in use (`inuse_objects`, `inuse_space`), as
   * @pyroscope/nodejs. 'alloc': allocations per window (`alloc_objects`, `alloc_space`)
   * instead; V8 samples one or the other. Also PYROSCOPE_HEAP_MODE.
   */
  mode?: 'inuse' | 'alloc' | undefined;
}

export interface PyroscopeConfig {
  appName?: string | undefined;
  authToken?: string | undefined;
  /** Upload period in milliseconds (60000 by default; 1000 to 3600000). */
  flushIntervalMs?: number | undefined;
  heap?: PyroscopeHeapConfig | undefined;
  serverAddress?: string | undefined;
  tags?: LabelSet | undefined;
  wall?: PyroscopeWallConfig | undefined;
  /** Frames of the files its source maps describe are named from their sources (see SourceMapper). */
  sourceMapper?: SourceMapper | undefined;
  basicAuthUser?: string | undefined;
  basicAuthPassword?: string | undefined;
  tenantID?: string | undefined;
  /**
   * Smaller profiles: 'all' leaves every frame without its file, 'dependencies' the frames of
   * files under node_modules/ (the function's name keeps the path). Also PYROSCOPE_STRIP_FILENAMES.
   */
  stripFilenames?: 'all' | 'dependencies' | undefined;
  /**
   * Frames of files under node_modules/ named by their path in their package
   * (`express/lib/router/index.js:handle:42`). Also PYROSCOPE_SHORTEN_PATHS.
   */
  shortenPaths?: boolean | undefined;
  /**
   * How labels follow async work; also PYROSCOPE_ASYNC_LABELS (true, false, all).
   * - `true` (default): along promises, so an async function keeps them across `await` and
   *   the requests running meanwhile never see them. On Node 20 (V8 11) V8 carries them,
   *   with no cost per await; timer, nextTick and I/O callbacks run unlabelled. Elsewhere as
   *   `'all'`.
   * - `'all'`: along promises and callbacks (AsyncLocalStorage), at about 0.2-0.35 µs per await (BENCHMARKS.md).
   * - `false`: the synchronous call only, as @pyroscope/nodejs 0.6 does.
   */
  asyncLabels?: boolean | 'all' | undefined;
}

/**
 * Where the package's messages go (setLogger): its own (debug when profiling starts, errors of
 * the pull-mode routes) and the core's warnings (an upload that failed, a label left out;
 * each kind once per process), delivered on the main thread's event loop. Missing methods
 * are skipped. Without a logger nothing is printed.
 */
export interface Logger {
  error?(...args: unknown[]): void;
  trace?(...args: unknown[]): void;
  debug?(...args: unknown[]): void;
  info?(...args: unknown[]): void;
  warn?(...args: unknown[]): void;
  fatal?(...args: unknown[]): void;
}

/** Checks the configuration (throws `Error('Invalid config: ...')`); does not start. */
export declare function init(config?: PyroscopeConfig): void;
/** Starts CPU and heap profiling. */
export declare function start(): void;
/** Stops profiling; resolves once the last profiles are sent (within the shutdown bound). */
export declare function stop(): Promise<void>;
/** Calls fn(...args) with `labels` in force (across its awaits too); returns what fn returns. */
export declare function wrapWithLabels<A extends unknown[], R>(labels: LabelSet, fn: (...args: A) => R, ...args: A): R;
/** The labels in force. */
export declare function getLabels(): LabelSet;
/**
 * Makes `labels` the labels in force: inside a labelled scope (wrapWithLabels, or code after a
 * labelled await) for the rest of it; outside any, everywhere outside labelled scopes, as
 * @pyroscope/nodejs 0.6 does. With asyncLabels 'all': the rest of the current run and the async
 * work it starts. Never wiped by an upload.
 */
export declare function setLabels(labels: LabelSet): void;
/** @deprecated use getLabels */
export declare function getWallLabels(): LabelSet;
/** @deprecated use setLabels */
export declare function setWallLabels(labels: LabelSet): void;
export declare function startWallProfiling(): void;
export declare function stopWallProfiling(): Promise<void>;
export declare function startCpuProfiling(): void;
export declare function stopCpuProfiling(): Promise<void>;
/** Starts heap profiling (V8's sampling heap profiler), uploaded as the `memory` profile. */
export declare function startHeapProfiling(): void;
/** Stops heap profiling; the last window gets the heap as it is at the call. */
export declare function stopHeapProfiling(): Promise<void>;
export declare function setLogger(logger: Logger | null): void;

/** The `(req, res, next)` middleware expressMiddleware() returns (Express, connect, plain http). */
export type PyroscopeRequestHandler = (
  req: { method?: string; url?: string; path?: string; query?: unknown },
  res: {
    statusCode: number;
    setHeader(name: string, value: string): unknown;
    end(body?: string | Buffer): unknown;
  },
  next: (err?: unknown) => void,
) => void;

/** The Fastify plugin fastifyMiddleware() returns (`app.register(plugin)`). */
export type PyroscopeFastifyPlugin = (
  fastify: { get(path: string, handler: (request: any, reply: any) => Promise<unknown>): unknown },
  options: Record<string, unknown>,
  done: (err?: Error) => void,
) => void;

/**
 * Pull mode: `GET /debug/pprof/profile?seconds=N` answers a gzipped pprof of the CPU samples
 * of the next N seconds (30 by default, at most 3600), taken by the running agent beside its
 * uploads; `GET /debug/pprof/heap` the heap profile where available (else 501). Other
 * requests go on to next(). Without start(), the first request starts profiling that uploads
 * nothing (pull mode alone, as @pyroscope/nodejs); before init() the routes answer 503.
 */
export declare function expressMiddleware(): PyroscopeRequestHandler;
/** The same two routes as a Fastify plugin. */
export declare function fastifyMiddleware(): PyroscopeFastifyPlugin;

export interface GeneratedLocation {
  file: string;
  name?: string;
  line: number;
  column: number;
}

export interface SourceLocation {
  file?: string;
  name?: string;
  line?: number;
  column?: number;
}

/**
 * @pyroscope/nodejs's SourceMapper: the source maps (`*.map` files) under some directories.
 * Passed to `init({ sourceMapper })`, it names the frames of transpiled or bundled code after
 * their sources: file, line, and the source's function name where the map has one.
 */
export declare class SourceMapper {
  /** Finds and parses the `*.map` files under `searchDirs` (node_modules skipped); rejects when a directory cannot be read. */
  static create(searchDirs: string[], debug?: boolean): Promise<SourceMapper>;
  constructor(debug?: boolean);
  /** Generated file (absolute path) -> where its map is, for each map loaded. */
  infoMap: Map<string, { mapFileDir: string }>;
  debug: boolean;
  /** Whether a source map describes the generated file `inputPath`. */
  hasMappingInfo(inputPath: string): boolean;
  /** `location` (1-based line and column) mapped to its source; `location` as given when no map covers it. */
  mappingInfo(location: GeneratedLocation): SourceLocation;
}

declare const pyroscope: {
  init: typeof init;
  start: typeof start;
  stop: typeof stop;
  wrapWithLabels: typeof wrapWithLabels;
  getLabels: typeof getLabels;
  setLabels: typeof setLabels;
  getWallLabels: typeof getWallLabels;
  setWallLabels: typeof setWallLabels;
  startWallProfiling: typeof startWallProfiling;
  stopWallProfiling: typeof stopWallProfiling;
  startCpuProfiling: typeof startCpuProfiling;
  stopCpuProfiling: typeof stopCpuProfiling;
  startHeapProfiling: typeof startHeapProfiling;
  stopHeapProfiling: typeof stopHeapProfiling;
  setLogger: typeof setLogger;
  expressMiddleware: typeof expressMiddleware;
  fastifyMiddleware: typeof fastifyMiddleware;
  SourceMapper: typeof SourceMapper;
};
export default pyroscope;
