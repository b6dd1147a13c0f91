// A sandbox's network: its egress policy (GET and PUT
// /v1/sandboxes/{id}/network; rules are IPs, CIDRs or domain names, one a
// line; `allow_out` wins over `deny_out`, both over the internet default)
// and links to the ports something in it listens on.

import type { Api, ListeningPort, NetworkPolicy, Sandbox } from './api';
import { ErrorBox, busy, field, h, mount } from './dom';

/** The host-form URL of a port: `{port}-{id}.{domain}`, with the access
 * token once in the query unless the port is public (the service then
 * keeps it in a cookie of that host). Null without a domain. */
export function portUrl(sandbox: Sandbox, port: number, scheme = location.protocol): string | null {
  if (!sandbox.domain) return null;
  let url = `${scheme}//${port}-${sandbox.id}.${sandbox.domain}/`;
  if (!sandbox.public_ports.includes(port) && sandbox.access_token) url += `?warren_token=${encodeURIComponent(sandbox.access_token)}`;
  return url;
}

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
  private readonly portsList = h('div', { class: 'ports-list', 'data-testid': 'ports-list' });
  private readonly portsBtn = h('button', { type: 'button' }, 'Refresh ports');
  private readonly portsErr = new ErrorBox('ports-error');
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
    this.portsBtn.addEventListener('click', () => void busy(this.portsBtn, 'Loading…', () => this.loadPorts()));
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
      h('h3', null, 'Ports'),
      h(
        'p',
        { class: 'muted small' },
        'Servers in the sandbox that listen on 0.0.0.0, opened through warren. A private port opens with the sandbox\'s access token (in the link); a public one needs nothing.',
      ),
      this.portsErr.el,
      h('div', { class: 'pane-toolbar' }, this.portsBtn),
      this.portsList,
    );
  }

  /** The listening ports, each with its link and a public switch. */
  private async loadPorts(): Promise<void> {
    try {
      const [sandbox, ports] = await Promise.all([this.api.getSandbox(this.id), this.api.listeningPorts(this.id)]);
      this.showPorts(sandbox, ports);
      this.portsErr.clear();
    } catch (e) {
      this.portsErr.show(e, 'Cannot list the ports');
    }
  }

  private showPorts(sandbox: Sandbox, ports: ListeningPort[]): void {
    if (ports.length === 0) {
      mount(this.portsList, h('p', { class: 'muted small' }, 'Nothing listens on a TCP port yet.'));
      return;
    }
    const rows = ports.map((p) => {
      const url = p.loopback_only ? null : portUrl(sandbox, p.port);
      const link = url
        ? h('a', { href: url, target: '_blank', rel: 'noopener', 'data-testid': `port-link-${p.port}` }, url.split('?')[0])
        : h('span', { class: 'muted' }, p.loopback_only ? 'listens on 127.0.0.1 only: listen on 0.0.0.0 to reach it' : 'no host form');
      const pub = h('input', { type: 'checkbox', checked: p.public, disabled: p.loopback_only, 'aria-label': `Port ${p.port} public` });
      pub.addEventListener('change', () => void this.setPublic(sandbox, p.port, pub.checked));
      return h('tr', null, h('td', { class: 'mono' }, String(p.port)), h('td', null, link), h('td', null, h('label', { class: 'check' }, pub, ' public')));
    });
    mount(this.portsList, h('table', { class: 'ports' }, h('tbody', null, rows)));
  }

  private async setPublic(sandbox: Sandbox, port: number, on: boolean): Promise<void> {
    const ports = sandbox.public_ports.filter((p) => p !== port);
    if (on) ports.push(port);
    try {
      await this.api.setPublicPorts(this.id, ports);
      await this.loadPorts();
    } catch (e) {
      this.portsErr.show(e, 'The port was not changed');
    }
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
    if (!this.loaded) {
      void this.load();
      void this.loadPorts();
    }
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
