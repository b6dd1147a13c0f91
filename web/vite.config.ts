import { defineConfig } from 'vite';

// The console is served by `warren up` at `/`, same origin as the API.
// `npm run dev` proxies the API to a running server (WARREN_URL, default
// http://127.0.0.1:7700) so the console can be developed with hot reload.
const target = process.env.WARREN_URL ?? 'http://127.0.0.1:7700';

export default defineConfig({
  base: '/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    sourcemap: false,
    target: 'es2022',
    // xterm is ~500 kB minified; that is expected for a terminal emulator.
    chunkSizeWarningLimit: 1024,
  },
  server: {
    proxy: {
      '/v1': { target, ws: true, changeOrigin: false },
      '/health': target,
      '/openapi.json': target,
      '/docs': target,
    },
  },
});
