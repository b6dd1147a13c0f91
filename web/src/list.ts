// The sandbox list (polled), the create form, and the snapshot templates.

import type { Api, Sandbox, Snapshot, Template } from './api';
import { ErrorBox, busy, field, h, mount, toast } from './dom';
import { absoluteTime, formatBytes, formatMemory, parsePairs, relativeTime } from './format';

const POLL_MS = 3000;

export function stateBadge(sb: Pick<Sandbox, 'state' | 'stop_reason'>): HTMLElement {
  const el = h('span', { class: `badge state-${sb.state}`, 'data-testid': 'sandbox-state' }, sb.state);
  if (sb.state === 'stopped' && sb.stop_reason) el.title = `stop reason: ${sb.stop_reason}`;
  return el;
}

export function metadataChips(md: Record<string, string> | undefined): HTMLElement {
  const entries = Object.entries(md ?? {});
  return h(
    'span',
    { class: 'chips' },
    entries.length === 0 ? h('span', { class: 'muted' }, '—') : entries.map(([k, v]) => h('span', { class: 'chip' }, `${k}=${v}`)),
  );
}

class Row {
  readonly tr: HTMLTableRowElement;
  private readonly cells: Record<string, HTMLTableCellElement> = {};
  private readonly killBtn: HTMLButtonElement;
  private sb: Sandbox;

  constructor(
    private readonly api: Api,
    sb: Sandbox,
    private readonly onChange: () => void,
  ) {
    this.sb = sb;
    const c = (name: string) => (this.cells[name] = h('td', { 'data-col': name }));
    this.killBtn = h('button', { type: 'button', class: 'danger small', 'aria-label': `Kill ${sb.id}` }, 'Kill');
    this.killBtn.addEventListener('click', () => void this.kill());
    this.tr = h(
      'tr',
      { 'data-testid': 'sandbox-row', 'data-sandbox-id': sb.id },
      h('td', null, h('a', { href: `#/sandboxes/${encodeURIComponent(sb.id)}`, class: 'mono' }, sb.id)),
      c('state'),
      c('template'),
      c('resources'),
      c('created'),
      c('expires'),
      c('metadata'),
      h('td', { class: 'row-actions' }, h('a', { href: `#/sandboxes/${encodeURIComponent(sb.id)}/terminal`, class: 'button small', 'aria-label': `Open terminal of ${sb.id}` }, 'Terminal'), this.killBtn),
    );
    this.update(sb);
  }

  update(sb: Sandbox): void {
    this.sb = sb;
    mount(this.cells.state, stateBadge(sb), sb.state === 'stopped' && sb.stop_reason ? h('small', { class: 'muted' }, ` ${sb.stop_reason}`) : null);
    this.cells.template.textContent = sb.template;
    this.cells.resources.textContent = `${sb.cpus} CPU · ${formatMemory(sb.memory_mib)}`;
    this.cells.created.textContent = relativeTime(sb.created_at);
    this.cells.created.title = absoluteTime(sb.created_at);
    const exp = sb.state === 'stopped' ? (sb.stopped_at ? `stopped ${relativeTime(sb.stopped_at)}` : 'stopped') : sb.expires_at ? relativeTime(sb.expires_at) : 'never';
    this.cells.expires.textContent = exp;
    this.cells.expires.title = absoluteTime(sb.state === 'stopped' ? sb.stopped_at : sb.expires_at);
    mount(this.cells.metadata, metadataChips(sb.metadata));
    this.killBtn.hidden = sb.state === 'stopped';
  }

  private async kill(): Promise<void> {
    if (!window.confirm(`Kill sandbox ${this.sb.id}? Its VM is stopped and everything in it is lost.`)) return;
    try {
      await busy(this.killBtn, 'Killing…', () => this.api.killSandbox(this.sb.id));
      toast(`Sandbox ${this.sb.id} killed`);
    } catch (e) {
      toast(`Kill failed: ${e instanceof Error ? e.message : String(e)}`, 'error');
    }
    this.onChange();
  }
}

export class ListView {
  readonly el: HTMLElement;
  private timer: number | undefined;
  private disposed = false;
  private loading = false;
  private readonly rows = new Map<string, Row>();
  private readonly tbody = h('tbody');
  private readonly empty = h('tr', { class: 'empty' }, h('td', { colspan: '8' }, 'No sandboxes yet. Create one above.'));
  private readonly stateFilter: HTMLSelectElement;
  private readonly mdFilter: HTMLInputElement;
  private readonly updated = h('span', { class: 'muted small', 'aria-live': 'off', 'data-testid': 'list-updated' });
  private readonly listError = new ErrorBox('list-error');
  private readonly createForm: CreateForm;
  private readonly snapshots: SnapshotsSection;

  constructor(private readonly api: Api) {
    this.stateFilter = h(
      'select',
      { 'data-testid': 'state-filter' },
      h('option', { value: '' }, 'all'),
      h('option', { value: 'running' }, 'running'),
      h('option', { value: 'paused' }, 'paused'),
      h('option', { value: 'stopped' }, 'stopped'),
    );
    this.stateFilter.addEventListener('change', () => this.reload(true));
    this.mdFilter = h('input', { type: 'search', placeholder: 'key:value', 'data-testid': 'metadata-filter' });
    this.mdFilter.addEventListener('change', () => this.reload(true));
    const refresh = h('button', { type: 'button', class: 'ghost' }, 'Refresh');
    refresh.addEventListener('click', () => this.reload(false));

    this.createForm = new CreateForm(api);
    this.snapshots = new SnapshotsSection(api, () => void this.createForm.loadTemplates(), (name) => this.createForm.select(name));
    this.el = h(
      'div',
      { class: 'list-view' },
      this.createForm.el,
      h(
        'section',
        { class: 'card', 'aria-labelledby': 'sandboxes-title' },
        h(
          'div',
          { class: 'section-head' },
          h('h2', { id: 'sandboxes-title' }, 'Sandboxes'),
          h('span', { class: 'spacer' }),
          field('Filter by state', this.stateFilter),
          field('Filter by metadata', this.mdFilter),
          refresh,
          this.updated,
        ),
        this.listError.el,
        h(
          'div',
          { class: 'table-wrap' },
          h(
            'table',
            { class: 'table', 'data-testid': 'sandbox-table', 'aria-labelledby': 'sandboxes-title' },
            h(
              'thead',
              null,
              h('tr', null, ['ID', 'State', 'Template', 'Resources', 'Created', 'Expires', 'Metadata', 'Actions'].map((t) => h('th', { scope: 'col' }, t))),
            ),
            this.tbody,
          ),
        ),
      ),
      this.snapshots.el,
    );
    this.reload(false);
    this.timer = window.setInterval(() => {
      if (!document.hidden) {
        this.reload(false);
        void this.snapshots.load();
      }
    }, POLL_MS);
  }

  private reload(clear: boolean): void {
    if (clear) {
      this.rows.clear();
      this.tbody.replaceChildren();
    }
    void this.load();
  }

  private async load(): Promise<void> {
    if (this.loading || this.disposed) return;
    this.loading = true;
    try {
      const md = this.mdFilter.value.trim();
      const q = new URLSearchParams();
      if (this.stateFilter.value) q.set('state', this.stateFilter.value);
      let list: Sandbox[];
      if (md) {
        list = await this.api.json<{ sandboxes: Sandbox[] }>('GET', '/v1/sandboxes', {
          query: { state: this.stateFilter.value || undefined, metadata: md.split(/\s+/) },
        }).then((r) => r.sandboxes);
      } else {
        list = await this.api.listSandboxes(this.stateFilter.value || undefined);
      }
      if (this.disposed) return;
      this.render(list);
      this.listError.clear();
      this.updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      if (!this.disposed) this.listError.show(e, 'Cannot list sandboxes');
    } finally {
      this.loading = false;
    }
  }

  private render(list: Sandbox[]): void {
    const sorted = [...list].sort((a, b) => b.created_at.localeCompare(a.created_at));
    const seen = new Set<string>();
    for (const sb of sorted) {
      seen.add(sb.id);
      const row = this.rows.get(sb.id);
      if (row) row.update(sb);
      else this.rows.set(sb.id, new Row(this.api, sb, () => this.reload(false)));
    }
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        this.rows.delete(id);
      }
    }
    // Keep DOM order = sorted order without recreating rows.
    sorted.forEach((sb, i) => {
      const tr = this.rows.get(sb.id)!.tr;
      if (this.tbody.children[i] !== tr) this.tbody.insertBefore(tr, this.tbody.children[i] ?? null);
    });
    if (sorted.length === 0) this.tbody.replaceChildren(this.empty);
    else this.empty.remove();
  }

  dispose(): void {
    this.disposed = true;
    window.clearInterval(this.timer);
  }
}

class CreateForm {
  readonly el: HTMLElement;
  private readonly template = h('select', { name: 'template', 'data-testid': 'create-template' });
  private readonly cpus = h('input', { type: 'number', name: 'cpus', min: '1', max: '64', step: '1', value: '1', 'data-testid': 'create-cpus' });
  private readonly memory = h('input', { type: 'number', name: 'memory_mib', min: '1', step: '1', value: '512', 'data-testid': 'create-memory' });
  private readonly timeout = h('input', { type: 'number', name: 'timeout_secs', min: '0', step: '1', value: '300', 'data-testid': 'create-timeout' });
  private readonly metadata = h('input', { type: 'text', name: 'metadata', placeholder: 'owner=me, purpose=demo', 'data-testid': 'create-metadata' });
  private readonly autoPause = h('input', { type: 'checkbox', name: 'auto_pause', 'data-testid': 'create-auto-pause' });
  private readonly autoResume = h('input', { type: 'checkbox', name: 'auto_resume', 'data-testid': 'create-auto-resume' });
  private readonly submit = h('button', { type: 'submit', class: 'primary' }, 'Create sandbox');
  private readonly progress = h('div', { class: 'progress', role: 'status', 'data-testid': 'create-progress', hidden: true });
  private readonly err = new ErrorBox('create-error');
  private templates: Template[] = [];

  constructor(private readonly api: Api) {
    const form = h(
      'form',
      { class: 'create-form', 'aria-label': 'Create sandbox' },
      h(
        'div',
        { class: 'grid' },
        field('Template', this.template),
        field('CPUs', this.cpus),
        field('Memory (MiB)', this.memory),
        field('Timeout (seconds)', this.timeout, '0 = no timeout'),
        field('Metadata', this.metadata, 'key=value, comma separated'),
      ),
      h(
        'div',
        { class: 'actions' },
        h('div', { class: 'check', title: 'At the timeout, pause the sandbox to disk instead of killing it' }, field('Pause at the timeout', this.autoPause)),
        h('div', { class: 'check', title: 'While paused, any operation (terminal, commands, files) resumes it first' }, field('Resume on use', this.autoResume)),
      ),
      this.err.el,
      h('div', { class: 'actions' }, this.submit, this.progress),
    );
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      void this.create();
    });
    this.template.addEventListener('change', () => this.applyTemplateLimits());
    this.el = h('section', { class: 'card', 'aria-labelledby': 'create-title' }, h('h2', { id: 'create-title' }, 'New sandbox'), form);
    void this.loadTemplates();
  }

  /** (Re)loads the template choices, keeping the selection when it still exists. */
  async loadTemplates(): Promise<void> {
    const previous = this.template.value;
    if (!this.templates.length) mount(this.template, h('option', { value: '' }, 'loading…'));
    try {
      this.templates = await this.api.templates();
      const option = (t: Template) =>
        h('option', { value: t.id, title: t.description ?? '' }, t.description ? `${t.name} — ${t.description}` : t.name);
      const images = this.templates.filter((t) => t.kind !== 'snapshot');
      const snapshots = this.templates.filter((t) => t.kind === 'snapshot');
      mount(
        this.template,
        snapshots.length
          ? [h('optgroup', { label: 'Images' }, images.map(option)), h('optgroup', { label: 'Snapshots' }, snapshots.map(option))]
          : images.map(option),
      );
      const keep = this.templates.find((t) => t.id === previous) ?? this.templates.find((t) => t.id === 'debian');
      if (keep) this.template.value = keep.id;
      this.applyTemplateLimits();
    } catch (e) {
      mount(this.template, h('option', { value: '' }, 'server default'));
      this.err.show(e, 'Cannot load templates');
    }
  }

  /** Selects a template (e.g. a snapshot to clone) and brings the form into view. */
  select(id: string): void {
    void this.loadTemplates().then(() => {
      if (this.templates.some((t) => t.id === id)) {
        this.template.value = id;
        this.applyTemplateLimits();
      }
      this.el.scrollIntoView({ behavior: 'smooth', block: 'start' });
      this.template.focus();
    });
  }

  /** Snapshot templates lock cpus/memory. */
  private applyTemplateLimits(): void {
    const t = this.templates.find((x) => x.id === this.template.value);
    const lockCpus = t?.cpus != null;
    const lockMem = t?.memory_mib != null;
    if (lockCpus) this.cpus.value = String(t!.cpus);
    if (lockMem) this.memory.value = String(t!.memory_mib);
    this.cpus.disabled = lockCpus;
    this.memory.disabled = lockMem;
  }

  private async create(): Promise<void> {
    this.err.clear();
    const req: Parameters<Api['createSandbox']>[0] = {};
    try {
      if (this.template.value) req.template = this.template.value;
      if (!this.cpus.disabled) req.cpus = intOf(this.cpus, 'CPUs');
      if (!this.memory.disabled) req.memory_mib = intOf(this.memory, 'Memory');
      req.timeout_secs = intOf(this.timeout, 'Timeout');
      const md = parsePairs(this.metadata.value);
      if (Object.keys(md).length) req.metadata = md;
      if (this.autoPause.checked) req.auto_pause = true;
      if (this.autoResume.checked) req.auto_resume = true;
    } catch (e) {
      this.err.show(e, 'Invalid input');
      return;
    }
    const started = performance.now();
    const tick = () => {
      const secs = ((performance.now() - started) / 1000).toFixed(1);
      mount(this.progress, h('span', { class: 'spinner', 'aria-hidden': 'true' }), ` Booting ${req.template ?? 'sandbox'}… ${secs} s`);
    };
    tick();
    this.progress.hidden = false;
    const timer = window.setInterval(tick, 100);
    try {
      const sb = await busy(this.submit, 'Creating…', () => this.api.createSandbox(req));
      const secs = ((performance.now() - started) / 1000).toFixed(1);
      toast(`Sandbox ${sb.id} is running (booted in ${secs} s)`);
      location.hash = `#/sandboxes/${encodeURIComponent(sb.id)}/terminal`;
    } catch (e) {
      this.err.show(e, 'Cannot create sandbox');
    } finally {
      window.clearInterval(timer);
      this.progress.hidden = true;
    }
  }
}

/** The team's snapshot templates: what they hold, who uses them, delete. */
class SnapshotsSection {
  readonly el: HTMLElement;
  private readonly tbody = h('tbody');
  private readonly err = new ErrorBox('snapshots-error');
  private readonly actionErr = new ErrorBox('snapshot-action-error');
  private loading = false;
  private names = '';

  constructor(
    private readonly api: Api,
    private readonly onChange: () => void,
    private readonly onClone: (name: string) => void,
  ) {
    this.el = h(
      'section',
      { class: 'card', 'aria-labelledby': 'snapshots-title', 'data-testid': 'snapshots' },
      h('div', { class: 'section-head' }, h('h2', { id: 'snapshots-title' }, 'Snapshots')),
      h('p', { class: 'form-help muted' }, 'Templates taken from sandboxes (Snapshot on a sandbox page). New sandboxes created from one start where it was.'),
      this.err.el,
      this.actionErr.el,
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { class: 'table', 'data-testid': 'snapshot-table', 'aria-labelledby': 'snapshots-title' },
          h(
            'thead',
            null,
            h('tr', null, ['Name', 'From', 'Resources', 'Memory on disk', 'Disk', 'Used by', 'Created', 'Actions'].map((t) => h('th', { scope: 'col' }, t))),
          ),
          this.tbody,
        ),
      ),
    );
    void this.load();
  }

  async load(): Promise<void> {
    if (this.loading) return;
    this.loading = true;
    try {
      const list = await this.api.snapshots();
      this.render(list);
      this.err.clear();
      // New or deleted snapshots change the create form's templates.
      const names = list.map((s) => s.name).join('\n');
      if (names !== this.names) {
        if (this.names !== '' || names !== '') this.onChange();
        this.names = names;
      }
    } catch (e) {
      this.err.show(e, 'Cannot list snapshots');
    } finally {
      this.loading = false;
    }
  }

  private render(list: Snapshot[]): void {
    if (list.length === 0) {
      mount(this.tbody, h('tr', { class: 'empty' }, h('td', { colspan: '8' }, 'No snapshots.')));
      return;
    }
    mount(
      this.tbody,
      list.map((s) => {
        const clone = h('button', { type: 'button', class: 'small', 'aria-label': `New sandbox from ${s.name}` }, 'New sandbox');
        clone.addEventListener('click', () => this.onClone(s.name));
        const del = h('button', { type: 'button', class: 'danger small', 'aria-label': `Delete snapshot ${s.name}` }, 'Delete');
        del.addEventListener('click', () => void this.remove(s, del));
        return h(
          'tr',
          { 'data-testid': 'snapshot-row', 'data-name': s.name },
          h('td', { class: 'mono' }, s.name),
          h('td', null, s.source_sandbox ? h('a', { href: `#/sandboxes/${encodeURIComponent(s.source_sandbox)}`, class: 'mono' }, s.source_sandbox) : '—'),
          h('td', null, `${s.cpus} CPU · ${formatMemory(s.memory_mib)}`),
          h('td', { class: 'num' }, formatBytes(s.memory_bytes)),
          h('td', { class: 'num' }, formatBytes(s.disk_bytes)),
          h(
            'td',
            { 'data-col': 'used-by' },
            s.used_by.length
              ? h('span', { class: 'chips' }, s.used_by.map((id) => h('a', { href: `#/sandboxes/${encodeURIComponent(id)}`, class: 'chip' }, id)))
              : h('span', { class: 'muted' }, '—'),
          ),
          h('td', { title: absoluteTime(s.created_at) }, relativeTime(s.created_at)),
          h('td', { class: 'row-actions' }, clone, del),
        );
      }),
    );
  }

  private async remove(s: Snapshot, btn: HTMLButtonElement): Promise<void> {
    if (!window.confirm(`Delete snapshot ${s.name}? New sandboxes can no longer be created from it.`)) return;
    this.actionErr.clear();
    try {
      await busy(btn, 'Deleting…', () => this.api.deleteSnapshot(s.name));
      toast(`Snapshot ${s.name} deleted`);
    } catch (e) {
      this.actionErr.show(e, `Cannot delete ${s.name}`);
    }
    await this.load();
  }
}

function intOf(input: HTMLInputElement, what: string): number {
  const v = Number(input.value);
  if (input.value.trim() === '' || !Number.isInteger(v) || v < 0) throw new Error(`${what} must be a whole number`);
  return v;
}
