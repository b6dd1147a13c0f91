#!/usr/bin/env node
// Fails when anything in dist/ references another host (http://, https://,
// ws://, wss:// followed by a literal host name). The console and the docs
// must work with no network but the warren server itself.
//
// Allowances (each is a reference the browser never fetches):
//   * licence texts (LICENSE*, NOTICE*, *.LICENSE.txt, THIRD-PARTY-LICENSES.txt):
//     copyright notices, never loaded by a page;
//   * www.w3.org anywhere: XML namespace names (xmlns in SVG, MathML, XHTML),
//     identifiers only;
//   * inside docs/swagger-ui-bundle.js only, the hosts listed in SWAGGER_BUNDLE
//     below: identifiers, links shown as text, or error-message links inside
//     the third-party bundle. The one that *would* be fetched,
//     validator.swagger.io, is switched off by `validatorUrl: null` in
//     docs/swagger-initializer.js (and the browser test checks that no
//     request leaves the server's origin).
// Usage: node scripts/check-offline.mjs [dir] [--verbose]

import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, basename } from 'node:path';
import { fileURLToPath } from 'node:url';

const web = dirname(dirname(fileURLToPath(import.meta.url)));
const args = process.argv.slice(2);
const verbose = args.includes('--verbose');
const root = args.find((a) => !a.startsWith('--')) ?? join(web, 'dist');

const GLOBAL_ALLOW = {
  'www.w3.org': 'XML namespace name',
};

const SWAGGER_BUNDLE = {
  'validator.swagger.io': 'default spec validator, disabled by validatorUrl: null',
  'spec.openapis.org': 'OpenAPI dialect/schema identifiers ($schema values), not fetched',
  'json-schema.org': 'JSON Schema dialect identifiers ($schema values), not fetched',
  'datatracker.ietf.org': 'RFC references in grammar comments',
  'www.rfc-editor.org': 'RFC references in grammar comments',
  'github.com': 'issue links in code comments, licence links',
  'reactjs.org': 'link in React production error messages',
  'redux.js.org': 'link in Redux production error messages',
  'fb.me': 'link in a React PropTypes error message',
  'swagger.io': 'link text in the UI',
  'spdx.org': 'licence link rendered for an spdx identifier in the spec info',
  'vladimirgorej.com': 'author URL in a bundled package',
  'example.com': 'examples in comments',
  'twitter.com': 'linkify patterns of a bundled syntax highlighter',
  'www.facebook.com': 'linkify patterns of a bundled syntax highlighter',
  'instagram.com': 'linkify patterns of a bundled syntax highlighter',
  'www.tiktok.com': 'linkify patterns of a bundled syntax highlighter',
  'soundcloud.com': 'linkify patterns of a bundled syntax highlighter',
};

const PER_FILE_ALLOW = {
  'docs/swagger-ui-bundle.js': SWAGGER_BUNDLE,
};

const LICENSE_FILE = /^(LICEN[CS]E|NOTICE|THIRD-PARTY-LICENSES)|\.LICEN[CS]E\.txt$/i;
const URL_RE = /\b(?:https?|wss?):\/\/([^\s/"'`\\)<>?#]*)/gi;
const LITERAL_HOST = /^[a-z0-9-]+(\.[a-z0-9-]+)*(:\d+)?$/i;

function* walk(dir) {
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) yield* walk(p);
    else yield p;
  }
}

let files = 0;
let failures = 0;
const allowed = new Map(); // reason -> count

try {
  statSync(root);
} catch {
  console.error(`check-offline: ${root} does not exist; run \`npm run build\` first`);
  process.exit(2);
}

for (const path of walk(root)) {
  const rel = relative(root, path).split('\\').join('/');
  files += 1;
  if (LICENSE_FILE.test(basename(path))) {
    allowed.set('licence text', (allowed.get('licence text') ?? 0) + 1);
    continue;
  }
  const text = readFileSync(path, 'latin1');
  const fileAllow = PER_FILE_ALLOW[rel] ?? {};
  for (const m of text.matchAll(URL_RE)) {
    const host = m[1].toLowerCase();
    if (!LITERAL_HOST.test(host)) continue; // "https://" + variable: no host named here
    const hostname = host.replace(/:\d+$/, '');
    const reason = GLOBAL_ALLOW[hostname] ?? fileAllow[hostname];
    if (reason) {
      const k = `${rel === 'docs/swagger-ui-bundle.js' && !GLOBAL_ALLOW[hostname] ? 'swagger bundle: ' : ''}${hostname}: ${reason}`;
      allowed.set(k, (allowed.get(k) ?? 0) + 1);
      continue;
    }
    failures += 1;
    const start = Math.max(0, m.index - 60);
    const context = text.slice(start, m.index + m[0].length + 40).replace(/\s+/g, ' ');
    console.error(`EXTERNAL ${rel}: ${m[0]}\n    …${context}…`);
  }
}

if (verbose || failures) {
  for (const [reason, n] of [...allowed].sort()) console.log(`  allowed ${n}× ${reason}`);
}
if (failures) {
  console.error(`check-offline: ${failures} reference(s) to other hosts in ${root}`);
  process.exit(1);
}
console.log(`check-offline: ok, ${files} files in ${relative(web, root) || root} reference no other host`);
