// The guest serial console: GET /v1/sandboxes/{id}/logs (text/plain).

import type { Api } from './api';
import { ErrorBox, busy, field, h } from './dom';

const TAIL_BYTES = 65536;

/** Drop terminal escape sequences and stray control characters. */
export function stripAnsi(s: string): string {
  return s
    // eslint-disable-next-line no-control-regex
    .replace(/\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]/g, '')
    .replace(/\r\n/g, '\n')
    // eslint-disable-next-line no-control-regex
    .replace(/[\x00-\x08\x0b-\x1f\x7f]/g, '');
}

export class LogsPane {
  readonly el: HTMLElement;
  private readonly pre = h('pre', { class: 'output logs', 'data-testid': 'logs', tabindex: '0', 'aria-label': 'Console log' });
  private readonly refreshBtn = h('button', { type: 'button' }, 'Refresh log');
  private readonly follow = h('input', { type: 'checkbox', checked: true, 'data-testid': 'logs-follow' });
  private readonly info = h('span', { class: 'muted small' });
  private readonly err = new ErrorBox('logs-error');
  private timer: number | undefined;
  private visible = false;

  constructor(
    private readonly api: Api,
    private readonly id: string,
  ) {
    this.refreshBtn.addEventListener('click', () => void busy(this.refreshBtn, 'Loading…', () => this.load()));
    this.follow.addEventListener('change', () => this.schedule());
    this.el = h(
      'div',
      { class: 'logs-pane' },
      h('div', { class: 'pane-toolbar' }, this.refreshBtn, h('div', { class: 'check' }, field('Auto-refresh', this.follow)), h('span', { class: 'spacer' }), this.info),
      this.err.el,
      this.pre,
    );
  }

  show(): void {
    this.visible = true;
    void this.load();
    this.schedule();
  }

  hide(): void {
    this.visible = false;
    this.schedule();
  }

  private schedule(): void {
    window.clearInterval(this.timer);
    if (this.visible && this.follow.checked) this.timer = window.setInterval(() => void this.load(), 3000);
  }

  private async load(): Promise<void> {
    try {
      const text = await this.api.logs(this.id, TAIL_BYTES);
      const atBottom = this.pre.scrollTop + this.pre.clientHeight >= this.pre.scrollHeight - 8;
      const clean = stripAnsi(text);
      this.pre.classList.toggle('empty', clean === '');
      this.pre.dataset.empty = clean === '' ? 'The console log is empty (the guest kernel boots quietly; programs can write to /dev/ttyS0).' : '';
      if (clean !== this.pre.textContent) {
        this.pre.textContent = clean;
        if (atBottom) this.pre.scrollTop = this.pre.scrollHeight;
      }
      this.info.textContent = `last ${Math.min(text.length, TAIL_BYTES)} bytes · ${new Date().toLocaleTimeString()}`;
      this.err.clear();
    } catch (e) {
      this.err.show(e, 'Cannot load the console log');
    }
  }

  dispose(): void {
    window.clearInterval(this.timer);
  }
}
