// "Run a command": POST /v1/sandboxes/{id}/exec and show the result.

import type { Api, ExecRequest } from './api';
import { ErrorBox, busy, field, h, mount } from './dom';
import { parsePairs } from './format';

export class ExecPane {
  readonly el: HTMLElement;
  private readonly cmd = h('input', { type: 'text', name: 'cmd', placeholder: 'uname -a && ls /', autocomplete: 'off', spellcheck: 'false', required: true, 'data-testid': 'exec-cmd', class: 'mono' });
  private readonly cwd = h('input', { type: 'text', name: 'cwd', placeholder: '/home/user', 'data-testid': 'exec-cwd' });
  private readonly user = h('input', { type: 'text', name: 'user', placeholder: 'root', 'data-testid': 'exec-user' });
  private readonly timeout = h('input', { type: 'number', name: 'timeout_secs', min: '0', value: '60', 'data-testid': 'exec-timeout' });
  private readonly env = h('input', { type: 'text', name: 'env', placeholder: 'FOO=bar, X=1', 'data-testid': 'exec-env' });
  private readonly stdin = h('textarea', { name: 'stdin', rows: '2', placeholder: '(optional)', 'data-testid': 'exec-stdin', class: 'mono' });
  private readonly run = h('button', { type: 'submit', class: 'primary' }, 'Run');
  private readonly err = new ErrorBox('exec-error');
  private readonly result = h('div', { class: 'exec-result', 'data-testid': 'exec-result', 'aria-live': 'polite' });

  constructor(
    private readonly api: Api,
    private readonly id: string,
  ) {
    const form = h(
      'form',
      { class: 'exec-form', 'aria-label': 'Run a command' },
      field('Command', this.cmd, 'run with /bin/sh -c'),
      h(
        'div',
        { class: 'grid' },
        field('Working directory', this.cwd),
        field('User', this.user),
        field('Command timeout (seconds)', this.timeout, '0 = none'),
        field('Environment', this.env, 'KEY=value, comma separated'),
      ),
      field('Stdin', this.stdin),
      this.err.el,
      h('div', { class: 'actions' }, this.run),
    );
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      void this.execute();
    });
    this.el = h('div', { class: 'exec-pane' }, form, this.result);
  }

  show(): void {
    this.cmd.focus();
  }

  private async execute(): Promise<void> {
    this.err.clear();
    const req: ExecRequest = { cmd: this.cmd.value };
    try {
      if (this.cwd.value.trim()) req.cwd = this.cwd.value.trim();
      if (this.user.value.trim()) req.user = this.user.value.trim();
      if (this.timeout.value.trim()) req.timeout_secs = Number(this.timeout.value);
      const env = parsePairs(this.env.value);
      if (Object.keys(env).length) req.env = env;
      if (this.stdin.value) req.stdin = this.stdin.value;
    } catch (e) {
      this.err.show(e, 'Invalid input');
      return;
    }
    const started = performance.now();
    try {
      const r = await busy(this.run, 'Running…', () => this.api.exec(this.id, req));
      const ms = Math.round(performance.now() - started);
      const status =
        r.signal != null ? `killed by signal ${r.signal}` : `exit code ${r.exit_code ?? '?'}`;
      mount(
        this.result,
        h(
          'div',
          { class: 'exec-summary' },
          h('span', { class: `badge ${r.exit_code === 0 ? 'ok' : 'bad'}`, 'data-testid': 'exec-exit' }, status),
          r.timed_out ? h('span', { class: 'badge bad' }, 'timed out') : null,
          r.truncated ? h('span', { class: 'badge warn' }, 'output truncated') : null,
          h('span', { class: 'muted' }, ` ${ms} ms · `, h('code', null, req.cmd ?? '')),
        ),
        h('h3', null, 'stdout'),
        h('pre', { class: 'output', 'data-testid': 'exec-stdout', 'aria-label': 'stdout' }, r.stdout || ''),
        h('h3', null, 'stderr'),
        h('pre', { class: 'output stderr', 'data-testid': 'exec-stderr', 'aria-label': 'stderr' }, r.stderr || ''),
      );
    } catch (e) {
      this.err.show(e, 'Command failed');
    }
  }

  dispose(): void {}
}
