// Runs only the HTTP part of firebase-tools' Storage emulator: the official launcher needs Java 21
// and a rules-runtime jar downloaded at start, neither of which can be had offline. The GCS JSON
// API routes use the admin storage layer and never consult rules. These are internal modules:
// firebase-tools is pinned exactly in package.json for that reason.
// The emulator reads whole upload bodies into memory and caps them at 130 MB; benchmark-sized
// LoRA checkpoints are larger. Its routes call bodyParser.raw when the app is made, so raising
// the cap here (before createApp) lets `npm run bench -- --size 4GiB` seed them.
const bodyParser = require(require.resolve('body-parser', { paths: [require.resolve('firebase-tools/lib/emulator/storage/server.js')] }));
const raw = bodyParser.raw;
// `raw` is a getter on body-parser's exports: redefined, not assigned.
Object.defineProperty(bodyParser, 'raw', { value: (opts = {}) => raw({ ...opts, limit: '4gb' }), enumerable: true });
const { StorageEmulator } = require('firebase-tools/lib/emulator/storage/index.js');
const { createApp } = require('firebase-tools/lib/emulator/storage/server.js');
const { EmulatorRegistry } = require('firebase-tools/lib/emulator/registry.js');
const { Emulators } = require('firebase-tools/lib/emulator/types.js');

const wantPort = Number(process.argv[2] || 0);
const projectId = process.argv[3] || 'demo-test';

(async () => {
  const args = { projectId, host: '127.0.0.1', port: wantPort, auto_download: false };
  const emulator = new StorageEmulator(args);
  const app = await createApp(projectId, emulator);
  const server = app.listen(wantPort, '127.0.0.1', () => {
    args.port = server.address().port; // used in selfLink/mediaLink
    EmulatorRegistry.set(Emulators.STORAGE, emulator);
    console.log(`LISTENING 127.0.0.1:${args.port}`);
  });
  const stop = async () => {
    server.close();
    try {
      await emulator._persistence.deleteAll();
    } catch {}
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
