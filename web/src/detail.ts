// One sandbox: header with lifecycle actions, and tabs.

import { ApiError, type Api, type PauseResult, type Sandbox, type Snapshot } from './api';
import { ErrorBox, busy, field, h, mount, toast } from './dom';
import { ExecPane } from './exec';
import { FilesPane } from './files';
import { absoluteTime, formatBytes, formatMemory, relativeTime } from './format';
import { metadataChips, stateBadge } from './list';
import { LogsPane } from './logs';
import { NetworkPane } from './network';
import { TerminalPane } from './terminal';

export type Tab = 'terminal' | 'exec' | 'files' | 'network' | 'logs' | 'details';

const TABS: { id: Tab; label: string }[] = [
  { id: 'terminal', label: 'Terminal' },
  { id: 'exec', label: 'Run command' },
  { id: 'files', label: 'Files' },
  { id: 'network', label: 'Network' },
  { id: 'logs', label: 'Console log' },
  { id: 'details', label: 'Details' },
];

const POLL_MS = 3000;

interface Pane {
  readonly el: HTMLElement;
  show?(): void;
  hide?(): void;
  dispose(): void;
}

export class DetailView {
  readonly el: HTMLElement;
  private timer: number | undefined;
  private disposed = false;
  private active: Tab | null = null;
  private readonly panes = new Map<Tab, Pane>();
  private readonly panels = new Map<Tab, HTMLElement>();
  private readonly tabLinks = new Map<Tab, HTMLAnchorElement>();
  private readonly title = h('h2', { class: 'mono', 'data-testid': 'sandbox-id' });
  private readonly summary = h('div', { class: 'summary' });
  private readonly pauseBtn = h('button', { type: 'button' }, 'Pause');
  private readonly resumeBtn = h('button', { type: 'button' }, 'Resume');
  private readonly snapshotBtn = h('button', { type: 'button', title: 'Save this sandbox as a template new sandboxes start from' }, 'Snapshot');
  /** What the last pause or snapshot did. */
  private readonly note = h('div', { class: 'action-note muted', role: 'status', 'data-testid': 'action-result', hidden: true });
  private lastState: Sandbox['state'] | null = null;
  private readonly killBtn = h('button', { type: 'button', class: 'danger' }, 'Kill');
  private readonly actionErr = new ErrorBox('action-error');
  private readonly loadErr = new ErrorBox('detail-error');
  private readonly details: DetailsPane;

  constructor(
    private readonly api: Api,
    readonly id: string,
    tab: Tab,
  ) {
    this.title.textContent = id;
    this.pauseBtn.addEventListener('click', () =>
      void this.action(this.pauseBtn, 'Pausing…', async () => {
        const result = await api.pause(id);
        this.showNote(pauseSummary(result));
        return result.sandbox;
      }, 'paused'),
    );
    this.resumeBtn.addEventListener('click', () =>
      void this.action(this.resumeBtn, 'Resuming…', () => api.resume(id), 'resumed').then((ok) => {
        // The pause ended the terminal's connection: open a new one.
        const term = this.panes.get('terminal');
        if (ok && term instanceof TerminalPane) term.reconnectIfDown();
      }),
    );
    this.snapshotBtn.addEventListener('click', () => void this.snapshot());
    this.killBtn.addEventListener('click', () => {
      if (!window.confirm(`Kill sandbox ${id}? Its VM is stopped and everything in it is lost.`)) return;
      void this.action(this.killBtn, 'Killing…', async () => {
        await api.killSandbox(id);
        return api.getSandbox(id);
      }, 'killed');
    });

    const tablist = h('div', { class: 'tabs', role: 'tablist', 'aria-label': 'Sandbox views' });
    const panelsEl = h('div', { class: 'panels' });
    for (const t of TABS) {
      const link = h('a', {
        href: `#/sandboxes/${encodeURIComponent(id)}/${t.id}`,
        role: 'tab',
        id: `tab-${t.id}`,
        'aria-controls': `panel-${t.id}`,
        'aria-selected': 'false',
        'data-testid': `tab-${t.id}`,
      }, t.label);
      this.tabLinks.set(t.id, link);
      tablist.append(link);
      const panel = h('div', { role: 'tabpanel', id: `panel-${t.id}`, 'aria-labelledby': `tab-${t.id}`, class: `panel panel-${t.id}`, hidden: true });
      this.panels.set(t.id, panel);
      panelsEl.append(panel);
    }
    this.details = new DetailsPane(api, id, (sb) => this.setSandbox(sb));

    this.el = h(
      'div',
      { class: 'detail-view' },
      h('div', { class: 'crumbs' }, h('a', { href: '#/' }, '← Sandboxes')),
      h(
        'section',
        { class: 'card detail-head', 'aria-label': 'Sandbox' },
        h('div', { class: 'head-row' }, this.title, h('span', { class: 'spacer' }), h('div', { class: 'actions' }, this.pauseBtn, this.resumeBtn, this.snapshotBtn, this.killBtn)),
        this.summary,
        this.note,
        this.actionErr.el,
        this.loadErr.el,
      ),
      h('section', { class: 'card tabs-card' }, tablist, panelsEl),
    );
    this.showTab(tab);
    void this.refresh();
    this.timer = window.setInterval(() => {
      if (!document.hidden) void this.refresh();
    }, POLL_MS);
  }

  private pane(tab: Tab): Pane {
    let p = this.panes.get(tab);
    if (!p) {
      switch (tab) {
        case 'terminal':
          p = new TerminalPane(this.api, this.id, () => this.whyUnreachable());
          break;
        case 'exec':
          p = new ExecPane(this.api, this.id);
          break;
        case 'files':
          p = new FilesPane(this.api, this.id);
          break;
        case 'network':
          p = new NetworkPane(this.api, this.id);
          break;
        case 'logs':
          p = new LogsPane(this.api, this.id);
          break;
        case 'details':
          p = this.details;
          break;
      }
      this.panes.set(tab, p);
      this.panels.get(tab)!.append(p.el);
    }
    return p;
  }

  showTab(tab: Tab): void {
    if (!this.panels.has(tab)) tab = 'terminal';
    if (this.active && this.active !== tab) {
      this.panels.get(this.active)!.hidden = true;
      this.panes.get(this.active)?.hide?.();
    }
    this.active = tab;
    for (const [t, link] of this.tabLinks) {
      link.setAttribute('aria-selected', String(t === tab));
      link.classList.toggle('active', t === tab);
    }
    const p = this.pane(tab);
    this.panels.get(tab)!.hidden = false;
    p.show?.();
  }

  /** Why the terminal could not connect, from the sandbox state. */
  private async whyUnreachable(): Promise<string | null> {
    try {
      const sb = await this.api.getSandbox(this.id);
      this.setSandbox(sb);
      return sb.state === 'running' ? null : `the sandbox is ${sb.state}`;
    } catch (e) {
      return e instanceof Error ? e.message : String(e);
    }
  }

  private async refresh(): Promise<void> {
    try {
      const sb = await this.api.getSandbox(this.id);
      if (this.disposed) return;
      this.setSandbox(sb);
      this.loadErr.clear();
    } catch (e) {
      if (this.disposed) return;
      this.loadErr.show(e, e instanceof ApiError && e.status === 404 ? 'Not found' : 'Cannot load the sandbox');
    }
  }

  private setSandbox(sb: Sandbox): void {
    mount(
      this.summary,
      stateBadge(sb),
      sb.state === 'stopped' && sb.stop_reason ? h('span', { class: 'muted' }, `(${sb.stop_reason})`) : null,
      h('span', null, h('span', { class: 'muted' }, 'template '), sb.template),
      h('span', null, `${sb.cpus} CPU · ${formatMemory(sb.memory_mib)}`),
      h('span', { title: absoluteTime(sb.created_at) }, h('span', { class: 'muted' }, 'created '), relativeTime(sb.created_at)),
      sb.state === 'stopped'
        ? h('span', { title: absoluteTime(sb.stopped_at) }, h('span', { class: 'muted' }, 'stopped '), relativeTime(sb.stopped_at))
        : h('span', { title: absoluteTime(sb.expires_at) }, h('span', { class: 'muted' }, 'expires '), sb.expires_at ? relativeTime(sb.expires_at) : 'never'),
      metadataChips(sb.metadata),
    );
    this.pauseBtn.hidden = sb.state !== 'running';
    this.resumeBtn.hidden = sb.state !== 'paused';
    this.snapshotBtn.hidden = sb.state === 'stopped';
    this.killBtn.hidden = sb.state === 'stopped';
    // A pause note is about the paused state; drop it once that is over.
    if (this.lastState === 'paused' && sb.state !== 'paused' && this.note.dataset.kind === 'pause') this.hideNote();
    this.lastState = sb.state;
    this.details.update(sb);
  }

  private showNote(text: string, kind: 'pause' | 'snapshot' = 'pause'): void {
    this.note.textContent = text;
    this.note.dataset.kind = kind;
    this.note.hidden = false;
  }

  private hideNote(): void {
    this.note.hidden = true;
    this.note.textContent = '';
  }

  /** Asks for a name, then turns the sandbox into a snapshot template. */
  private async snapshot(): Promise<void> {
    const name = window.prompt(
      'Name of the snapshot template (letters, digits, "-", "_", "."). New sandboxes can then be created from it.',
      `${this.id}-snapshot`,
    );
    if (name === null || name.trim() === '') return;
    this.actionErr.clear();
    try {
      const snap = await busy(this.snapshotBtn, 'Snapshotting…', () => this.api.createSnapshot(this.id, name.trim()));
      this.showNote(snapshotSummary(snap), 'snapshot');
      toast(`Snapshot ${snap.name} created`);
    } catch (e) {
      this.actionErr.show(e, 'Cannot take a snapshot');
    }
    void this.refresh();
  }

  /** Runs a lifecycle action; true if it succeeded. */
  private async action(btn: HTMLButtonElement, label: string, fn: () => Promise<Sandbox>, done: string): Promise<boolean> {
    this.actionErr.clear();
    try {
      const sb = await busy(btn, label, fn);
      this.setSandbox(sb);
      toast(`Sandbox ${this.id} ${done}`);
      return true;
    } catch (e) {
      this.actionErr.show(e, `Cannot ${btn.textContent?.toLowerCase() ?? 'do that'}`);
      void this.refresh();
      return false;
    }
  }

  dispose(): void {
    this.disposed = true;
    window.clearInterval(this.timer);
    for (const p of this.panes.values()) p.dispose();
  }
}

/** "Paused: 123.4 MiB written (full snapshot), chain 1, 850 ms". */
export function pauseSummary(r: PauseResult): string {
  const kind = r.full ? 'full snapshot' : r.merged ? 'changes since the last pause, chain merged' : 'changes since the last pause';
  return `Paused: ${formatBytes(r.memory_bytes)} written (${kind}), chain ${r.chain_length}, ${r.duration_ms} ms`;
}

function snapshotSummary(s: Snapshot): string {
  return `Snapshot ${s.name} created: ${formatBytes(s.memory_bytes)} of memory, ${formatBytes(s.disk_bytes)} of disk. New sandboxes can start from it (template ${s.name}).`;
}

class DetailsPane implements Pane {
  readonly el: HTMLElement;
  private readonly dl = h('dl', { class: 'props', 'data-testid': 'sandbox-details' });
  private readonly timeout = h('input', { type: 'number', min: '0', step: '1', name: 'timeout_secs', 'data-testid': 'timeout-input' });
  private readonly setBtn = h('button', { type: 'submit' }, 'Set timeout');
  private readonly err = new ErrorBox('timeout-error');
  private readonly events = h('tbody');
  private readonly eventsErr = new ErrorBox('events-error');
  private timeoutTouched = false;

  constructor(
    private readonly api: Api,
    private readonly id: string,
    private readonly onUpdate: (sb: Sandbox) => void,
  ) {
    this.timeout.addEventListener('input', () => (this.timeoutTouched = true));
    const form = h(
      'form',
      { class: 'inline-form', 'aria-label': 'Set timeout' },
      field('Sandbox timeout (seconds)', this.timeout),
      this.setBtn,
    );
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      void this.setTimeout();
    });
    this.el = h(
      'div',
      { class: 'details-pane' },
      this.dl,
      form,
      h('p', { class: 'form-help' }, 'The sandbox expires this many seconds from now; 0 = never.'),
      this.err.el,
      h('h3', null, 'Events'),
      this.eventsErr.el,
      h('div', { class: 'table-wrap' }, h('table', { class: 'table', 'aria-label': 'Events' }, h('thead', null, h('tr', null, ['When', 'Kind', 'Actor', 'Detail'].map((t) => h('th', { scope: 'col' }, t)))), this.events)),
    );
  }

  show(): void {
    void this.loadEvents();
  }

  update(sb: Sandbox): void {
    const row = (k: string, v: Node | string) => [h('dt', null, k), h('dd', null, v)];
    const kv = (o: Record<string, string> | undefined) => {
      const e = Object.entries(o ?? {});
      return e.length ? h('span', { class: 'mono' }, e.map(([k, v]) => `${k}=${v}`).join('  ')) : h('span', { class: 'muted' }, '—');
    };
    mount(
      this.dl,
      row('ID', h('span', { class: 'mono' }, sb.id)),
      row('State', sb.state + (sb.stop_reason ? ` (${sb.stop_reason})` : '')),
      row('Template', sb.template),
      row('CPUs', String(sb.cpus)),
      row('Memory', formatMemory(sb.memory_mib)),
      row('Timeout', sb.timeout_secs ? `${sb.timeout_secs} s` : 'none'),
      row('Auto-pause', sb.auto_pause ? 'yes (paused at the timeout)' : 'no'),
      row('Auto-resume', sb.auto_resume ? 'yes (any operation resumes it)' : 'no'),
      row('Created', absoluteTime(sb.created_at)),
      row('Expires', sb.expires_at ? `${absoluteTime(sb.expires_at)} (${relativeTime(sb.expires_at)})` : 'never'),
      row('Stopped', sb.stopped_at ? absoluteTime(sb.stopped_at) : '—'),
      row('Metadata', kv(sb.metadata)),
      row('Environment', kv(sb.env)),
    );
    if (!this.timeoutTouched) this.timeout.value = String(sb.timeout_secs);
    this.setBtn.disabled = sb.state === 'stopped';
  }

  private async setTimeout(): Promise<void> {
    this.err.clear();
    const v = Number(this.timeout.value);
    if (!Number.isInteger(v) || v < 0) {
      this.err.show(new Error('timeout must be a whole number of seconds'), 'Invalid input');
      return;
    }
    try {
      const sb = await busy(this.setBtn, 'Setting…', () => this.api.setTimeout(this.id, v));
      this.timeoutTouched = false;
      this.onUpdate(sb);
      toast(v ? `Sandbox expires ${relativeTime(sb.expires_at)}` : 'Sandbox timeout removed');
      void this.loadEvents();
    } catch (e) {
      this.err.show(e, 'Cannot set the timeout');
    }
  }

  private async loadEvents(): Promise<void> {
    try {
      const events = await this.api.events(this.id);
      mount(
        this.events,
        events.length === 0
          ? h('tr', { class: 'empty' }, h('td', { colspan: '4' }, 'No events'))
          : events.map((ev) =>
              h(
                'tr',
                null,
                h('td', { title: absoluteTime(ev.at) }, relativeTime(ev.at)),
                h('td', { class: 'mono' }, ev.kind),
                h('td', { class: 'mono' }, ev.actor ?? ''),
                h('td', { class: 'mono small' }, ev.detail == null ? '' : JSON.stringify(ev.detail)),
              ),
            ),
      );
      this.eventsErr.clear();
    } catch (e) {
      this.eventsErr.show(e, 'Cannot load events');
    }
  }

  dispose(): void {}
}
