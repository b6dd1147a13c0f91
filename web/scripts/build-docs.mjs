#!/usr/bin/env node
// Runs after `vite build`: puts an offline Swagger UI into dist/docs/ (files
// from the npm package swagger-ui-dist, our own index.html and initializer
// pointing at /openapi.json) and the third-party licence texts into dist/.
// Deterministic: the output depends only on the installed packages.

import { copyFileSync, mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const web = dirname(dirname(fileURLToPath(import.meta.url)));
const dist = join(web, 'dist');
const docs = join(dist, 'docs');
const require = createRequire(join(web, 'package.json'));

if (!existsSync(join(dist, 'index.html'))) {
  console.error('build-docs: dist/index.html is missing; run `vite build` first');
  process.exit(1);
}

const pkgDir = (name) => dirname(require.resolve(`${name}/package.json`));
const swaggerDir = pkgDir('swagger-ui-dist');
const swaggerVersion = JSON.parse(readFileSync(join(swaggerDir, 'package.json'), 'utf8')).version;

mkdirSync(docs, { recursive: true });

// Source maps are not shipped: drop the comments that point at them.
const stripSourceMap = (text) =>
  text.replace(/\n?\/\*# sourceMappingURL=[^*]*\*\/\s*$/, '\n').replace(/\n?\/\/# sourceMappingURL=\S+\s*$/, '\n');

for (const file of ['swagger-ui.css', 'swagger-ui-bundle.js']) {
  writeFileSync(join(docs, file), stripSourceMap(readFileSync(join(swaggerDir, file), 'utf8')));
}
for (const file of ['favicon-32x32.png', 'favicon-16x16.png', 'swagger-ui-bundle.js.LICENSE.txt']) {
  copyFileSync(join(swaggerDir, file), join(docs, file));
}
copyFileSync(join(swaggerDir, 'LICENSE'), join(docs, 'LICENSE.swagger-ui.txt'));
copyFileSync(join(swaggerDir, 'NOTICE'), join(docs, 'NOTICE.swagger-ui.txt'));

// Root-absolute URLs: the server may serve this page at /docs (no trailing
// slash), where relative URLs would resolve against /.
writeFileSync(
  join(docs, 'index.html'),
  `<!doctype html>
<html lang="en">
  <head>
    <meta charset="UTF-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1" />
    <title>warren API · Swagger UI</title>
    <link rel="stylesheet" href="/docs/swagger-ui.css" />
    <link rel="icon" type="image/png" href="/docs/favicon-32x32.png" sizes="32x32" />
    <link rel="icon" type="image/png" href="/docs/favicon-16x16.png" sizes="16x16" />
    <style>
      body { margin: 0; background: #fafafa; }
      .warren-bar { font: 14px system-ui, sans-serif; padding: 8px 20px; background: #1c2330; color: #e3e7ee; display: flex; gap: 16px; }
      .warren-bar a { color: #9cc0ff; text-decoration: none; }
    </style>
  </head>
  <body>
    <nav class="warren-bar" aria-label="warren"><strong>warren API</strong><a href="/">← console</a><a href="/openapi.json">openapi.json</a></nav>
    <div id="swagger-ui"><noscript>Swagger UI needs JavaScript; the raw document is at /openapi.json.</noscript></div>
    <script src="/docs/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="/docs/swagger-initializer.js" charset="UTF-8"></script>
  </body>
</html>
`,
);

writeFileSync(
  join(docs, 'swagger-initializer.js'),
  `// warren: Swagger UI ${swaggerVersion}, fully offline, for /openapi.json.
// The API key the console stored in localStorage (same origin) is sent with
// the document request and pre-filled into "Authorize".
(function () {
  var KEY_STORAGE = 'warren.apiKey';
  function storedKey() {
    try { return window.localStorage.getItem(KEY_STORAGE); } catch (e) { return null; }
  }
  function sameOrigin(url) {
    try { return new URL(url, window.location.href).origin === window.location.origin; } catch (e) { return false; }
  }
  window.ui = SwaggerUIBundle({
    url: '/openapi.json',
    dom_id: '#swagger-ui',
    deepLinking: true,
    layout: 'BaseLayout',
    presets: [SwaggerUIBundle.presets.apis],
    plugins: [],
    // The default validator badge fetches validator.swagger.io: never.
    validatorUrl: null,
    tryItOutEnabled: false,
    persistAuthorization: false,
    requestInterceptor: function (req) {
      var key = storedKey();
      var hasAuth = req.headers && (req.headers.Authorization || req.headers.authorization || req.headers['X-API-Key']);
      if (key && !hasAuth && sameOrigin(req.url)) {
        req.headers = req.headers || {};
        req.headers.Authorization = 'Bearer ' + key;
      }
      return req;
    },
    onComplete: function () {
      var key = storedKey();
      if (!key) return;
      var spec = window.ui.specSelectors.specJson().toJS();
      var schemes = (spec.components && spec.components.securitySchemes) || {};
      Object.keys(schemes).forEach(function (name) {
        var s = schemes[name];
        if ((s.type === 'http' && String(s.scheme).toLowerCase() === 'bearer') || s.type === 'apiKey') {
          window.ui.preauthorizeApiKey(name, key);
        }
      });
    },
  });
})();
`,
);

// Licence texts of what the console bundle contains.
const notices = ['@xterm/xterm', '@xterm/addon-fit'].map((name) => {
  const dir = pkgDir(name);
  const version = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')).version;
  return `${name} ${version}\n${'-'.repeat(40)}\n${readFileSync(join(dir, 'LICENSE'), 'utf8').trim()}\n`;
});
writeFileSync(
  join(dist, 'THIRD-PARTY-LICENSES.txt'),
  `Third-party software in the warren web console (assets/*.js).\nSwagger UI's licence texts are under docs/.\n\n${notices.join('\n')}`,
);

console.log(`build-docs: Swagger UI ${swaggerVersion} -> dist/docs/`);
