// A sandbox's egress policy: GET and PUT /v1/sandboxes/{id}/network.
// Rules are IPs, CIDRs or domain names (`pypi.org`, `*.github.com`), one a
// line; `allow_out` wins over `deny_out`, both over the internet default.

import type { Api, NetworkPolicy } from './api';
import { ErrorBox, busy, field, h } from './dom';

/** The rules of a textarea: one a line, blank lines and spaces dropped. */
export function parseRules(text: string): string[] {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');
}

export class NetworkPane {
  readonly el: HTMLElement;
  private readonly internet = h('input', { type: 'checkbox', 'data-testid': 'network-internet' });
  private readonly allow = h('textarea', { rows: 4, class: 'mono', spellcheck: false, placeholder: 'pypi.org\n*.github.com\n198.51.100.0/24' });
  private readonly deny = h('textarea', { rows: 4, class: 'mono', spellcheck: false, placeholder: '0.0.0.0/0' });
  private readonly saveBtn = h('button', { type: 'submit', class: 'primary' }, 'Save policy');
  private readonly reloadBtn = h('button', { type: 'button' }, 'Reload');
  private readonly status = h('span', { class: 'muted small', role: 'status', 'data-testid': 'network-status' });
  private readonly err = new ErrorBox('network-error');
  private loaded = false;

  constructor(
    private readonly api: Api,
    private readonly id: string,
  ) {
    const form = this.buildForm();
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      void busy(this.saveBtn, 'Saving…', () => this.save());
    });
    this.reloadBtn.addEventListener('click', () => void busy(this.reloadBtn, 'Loading…', () => this.load()));
    this.el = h(
      'div',
      { class: 'network-pane' },
      h(
        'p',
        { class: 'muted small' },
        'The host, link-local and metadata addresses, and other sandboxes are always blocked. Changes apply to new connections at once.',
      ),
      this.err.el,
      form,
    );
  }

  /** The policy's fields and the save and reload buttons. */
  private buildForm(): HTMLFormElement {
    return h(
      'form',
      { class: 'network-form', 'aria-label': 'Network policy' },
      h('div', { class: 'check' }, field('Internet access', this.internet, 'Destinations no rule names are reachable.')),
      field('Allowed destinations', this.allow, 'Always reachable, whatever is denied. One IP, CIDR or domain a line.'),
      field('Denied destinations', this.deny, 'Blocked unless allowed. 0.0.0.0/0 denies everything not allowed.'),
      h('div', { class: 'pane-toolbar' }, this.saveBtn, this.reloadBtn, h('span', { class: 'spacer' }), this.status),
    );
  }

  show(): void {
    if (!this.loaded) void this.load();
  }

  private fill(policy: NetworkPolicy): void {
    this.internet.checked = policy.internet ?? true;
    this.allow.value = (policy.allow_out ?? []).join('\n');
    this.deny.value = (policy.deny_out ?? []).join('\n');
  }

  private async load(): Promise<void> {
    try {
      this.fill(await this.api.network(this.id));
      this.loaded = true;
      this.status.textContent = `loaded ${new Date().toLocaleTimeString()}`;
      this.err.clear();
    } catch (e) {
      this.err.show(e, 'Cannot load the network policy');
    }
  }

  private async save(): Promise<void> {
    const policy: NetworkPolicy = {
      internet: this.internet.checked,
      allow_out: parseRules(this.allow.value),
      deny_out: parseRules(this.deny.value),
    };
    try {
      // The service answers the rules in their normal form.
      this.fill(await this.api.setNetwork(this.id, policy));
      this.status.textContent = `saved ${new Date().toLocaleTimeString()}`;
      this.err.clear();
    } catch (e) {
      this.err.show(e, 'The policy was not changed');
    }
  }

  dispose(): void {}
}
