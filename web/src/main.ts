// warren web console: entry point, login and hash routing.
//   #/                         sandbox list (+ create form)
//   #/sandboxes/<id>[/<tab>]   one sandbox: terminal, exec, files, logs, details

import '@xterm/xterm/css/xterm.css';
import './style.css';

import { Api, ApiError, storedKey, storeKey } from './api';
import { ErrorBox, busy, field, h, mount } from './dom';
import { ListView } from './list';
import { DetailView, type Tab } from './detail';

export interface View {
  readonly el: HTMLElement;
  dispose(): void;
}

const root = document.getElementById('app')!;
let current: View | null = null;
let healthTimer: number | undefined;

function loginView(reason?: string): void {
  stopApp();
  const key = h('input', {
    type: 'password',
    name: 'api_key',
    autocomplete: 'off',
    spellcheck: 'false',
    placeholder: 'wrn_…',
    required: true,
    'data-testid': 'login-key',
  });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Log in');
  const err = new ErrorBox('login-error');
  if (reason) err.show(new Error(reason));
  const form = h(
    'form',
    { class: 'login card', 'aria-label': 'Log in' },
    h('h1', null, h('span', { class: 'logo', 'aria-hidden': 'true' }, '▣'), ' warren'),
    h('p', { class: 'muted' }, 'Sign in with an API key. The admin key of a local server is in ', h('code', null, '$WARREN_HOME/admin.key'), '.'),
    field('API key', key),
    err.el,
    h('div', { class: 'actions' }, submit),
  );
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const value = key.value.trim();
    if (!value) return;
    err.clear();
    void busy(submit, 'Checking…', async () => {
      const api = new Api(value);
      try {
        await api.listSandboxes();
      } catch (e) {
        err.show(e, e instanceof ApiError && e.status === 401 ? 'Key rejected' : 'Cannot log in');
        return;
      }
      storeKey(value);
      startApp(api);
    });
  });
  mount(root, h('main', { class: 'login-page' }, form));
  key.focus();
}

function stopApp(): void {
  current?.dispose();
  current = null;
  window.clearInterval(healthTimer);
  window.removeEventListener('hashchange', route);
}

let api: Api | null = null;
let content: HTMLElement;

function startApp(a: Api): void {
  stopApp();
  api = a;
  api.onUnauthorized = () => {
    storeKey(null);
    loginView('The server rejected the API key (revoked or wrong). Log in again.');
  };
  const health = h('span', { class: 'health muted', 'data-testid': 'health' });
  const logout = h('button', { type: 'button', class: 'ghost' }, 'Log out');
  logout.addEventListener('click', () => {
    storeKey(null);
    loginView();
  });
  content = h('main', { id: 'content' });
  mount(
    root,
    h(
      'header',
      { class: 'topbar' },
      h('a', { class: 'brand', href: '#/' }, h('span', { class: 'logo', 'aria-hidden': 'true' }, '▣'), ' warren'),
      h(
        'nav',
        { 'aria-label': 'Main' },
        h('a', { href: '#/' }, 'Sandboxes'),
        h('a', { href: '/docs', target: '_blank', rel: 'noopener' }, 'API docs'),
      ),
      h('span', { class: 'spacer' }),
      health,
      h('span', { class: 'muted key-prefix', title: 'API key in use' }, `${a.key.slice(0, 8)}…`),
      logout,
    ),
    content,
  );
  const refreshHealth = async () => {
    try {
      const hl = await Api.health();
      health.textContent = `v${hl.version} · ${hl.accel} · ${hl.sandboxes_running} running`;
      health.classList.remove('bad');
    } catch {
      health.textContent = 'server unreachable';
      health.classList.add('bad');
    }
  };
  void refreshHealth();
  healthTimer = window.setInterval(refreshHealth, 10000);
  window.addEventListener('hashchange', route);
  route();
}

function route(): void {
  if (!api) return;
  const hash = location.hash.replace(/^#/, '') || '/';
  const parts = hash.split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] === 'sandboxes' && parts[1]) {
    const tab = (parts[2] as Tab | undefined) ?? 'terminal';
    // Switching tabs of the same sandbox keeps the view (and its terminal).
    if (current instanceof DetailView && current.id === parts[1]) {
      current.showTab(tab);
      return;
    }
    current?.dispose();
    current = new DetailView(api, parts[1], tab);
  } else {
    current?.dispose();
    current = new ListView(api);
  }
  mount(content, current.el);
}

const saved = storedKey();
if (saved) startApp(new Api(saved));
else loginView();
