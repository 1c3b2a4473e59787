// A TypeScript app of the kind @pyroscope/nodejs users have, checked against index.d.ts by
// test/types.test.js (tsc --strict). Lines marked @ts-expect-error must not type-check.
import * as http from 'node:http';
import Pyroscope, {
  init,
  start,
  stop,
  wrapWithLabels,
  getLabels,
  setLabels,
  expressMiddleware,
  SourceMapper,
  type LabelSet,
  type PyroscopeConfig,
  type Logger,
} from 'pyroscope-profiler';

async function main(): Promise<void> {
  const sourceMapper: SourceMapper = await SourceMapper.create([process.cwd()]);
  const config: PyroscopeConfig = {
    appName: 'typed-app',
    serverAddress: 'http://localhost:4040',
    authToken: 'token',
    basicAuthUser: 'user',
    basicAuthPassword: 'password',
    tenantID: 'tenant',
    flushIntervalMs: 10000,
    tags: { region: 'eu-north', shard: 3 },
    wall: { samplingDurationMs: 10000, samplingIntervalMicros: 10000, collectCpuTime: true },
    heap: { samplingIntervalBytes: 524288, stackDepth: 64, mode: 'inuse' },
    sourceMapper,
    stripFilenames: 'dependencies',
    shortenPaths: true,
    asyncLabels: 'all',
  };
  init(config);
  Pyroscope.init({ appName: 'typed-app' });
  // @ts-expect-error appName is a string
  init({ appName: 1 });
  // @ts-expect-error stripFilenames is 'all' or 'dependencies'
  init({ stripFilenames: 'some' });
  // @ts-expect-error no such option
  init({ sampleRate: 100 });
  start();
  Pyroscope.startHeapProfiling();

  // wrapWithLabels returns what its function returns, a Promise included.
  const n: number = wrapWithLabels({ vehicle: 'car' }, (a: number, b: number) => a + b, 1, 2);
  const s: string = await wrapWithLabels({ vehicle: 'bike' }, async (x: string) => x.repeat(2), 'ab');
  // @ts-expect-error the arguments follow the function's parameters
  wrapWithLabels({ vehicle: 'car' }, (a: number) => a, 'not a number');
  const labels: LabelSet = getLabels();
  setLabels({ ...labels, step: 1 });

  const logger: Logger = { error: (...args: unknown[]) => console.error(...args) };
  Pyroscope.setLogger(logger);
  Pyroscope.setLogger(null);

  const pull = expressMiddleware();
  http.createServer((req, res) => pull(req, res, () => res.end('next')));

  const mapped = sourceMapper.mappingInfo({ file: '/app/dist/app.js', line: 1, column: 1 });
  const file: string | undefined = mapped.file;

  await Pyroscope.stopHeapProfiling();
  const stopped: Promise<void> = stop();
  await stopped;
  console.log(n, s, file);
}

void main();
