// File browser: list, navigate, download, upload, mkdir, delete.

import { ApiError, type Api, type FileInfo } from './api';
import { ErrorBox, busy, field, h, mount, toast } from './dom';
import { absoluteTime, formatBytes, formatMode, joinPath, parentPath, relativeTime } from './format';

export const DEFAULT_DIR = '/home/user';

const ICONS: Record<FileInfo['type'], string> = {
  dir: 'M2 4.5A1.5 1.5 0 0 1 3.5 3h3l1.5 1.5h4.5A1.5 1.5 0 0 1 14 6v5.5a1.5 1.5 0 0 1-1.5 1.5h-9A1.5 1.5 0 0 1 2 11.5z',
  file: 'M4 2h5l3 3v8.5a.5.5 0 0 1-.5.5h-7a.5.5 0 0 1-.5-.5V2.5A.5.5 0 0 1 4 2zm5 0v3h3',
  symlink: 'M6.5 9.5l3-3M7 5l1-1a2.1 2.1 0 0 1 3 3l-1 1M9 11l-1 1a2.1 2.1 0 0 1-3-3l1-1',
  other: 'M8 3a5 5 0 1 0 0 10A5 5 0 0 0 8 3z',
};

/** A small inline SVG icon for a file type (no icon font, no emoji font needed). */
function icon(type: FileInfo['type']): SVGSVGElement {
  const NS = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', '0 0 16 16');
  svg.setAttribute('class', `ficon ficon-${type}`);
  svg.setAttribute('aria-hidden', 'true');
  const path = document.createElementNS(NS, 'path');
  path.setAttribute('d', ICONS[type] ?? ICONS.other);
  svg.append(path);
  return svg;
}

export class FilesPane {
  readonly el: HTMLElement;
  private cwd = DEFAULT_DIR;
  private readonly pathInput = h('input', { type: 'text', name: 'path', class: 'mono', spellcheck: 'false', 'data-testid': 'files-path' });
  private readonly upBtn = h('button', { type: 'button', 'aria-label': 'Parent directory' }, '↑ Up');
  private readonly refreshBtn = h('button', { type: 'button', class: 'ghost' }, 'Refresh');
  private readonly fileInput = h('input', { type: 'file', name: 'file', multiple: true, 'data-testid': 'files-upload-input' });
  private readonly uploadBtn = h('button', { type: 'submit', class: 'primary' }, 'Upload');
  private readonly folderInput = h('input', { type: 'text', name: 'folder', placeholder: 'new-folder', 'data-testid': 'files-mkdir-name' });
  private readonly mkdirBtn = h('button', { type: 'submit' }, 'Create folder');
  private readonly tbody = h('tbody');
  private readonly err = new ErrorBox('files-error');
  private loaded = false;
  private seq = 0;

  constructor(
    private readonly api: Api,
    private readonly id: string,
  ) {
    const nav = h(
      'form',
      { class: 'files-nav', 'aria-label': 'Go to directory' },
      this.upBtn,
      field('Directory', this.pathInput),
      h('button', { type: 'submit' }, 'Go'),
      this.refreshBtn,
    );
    nav.addEventListener('submit', (ev) => {
      ev.preventDefault();
      void this.open(this.pathInput.value.trim() || '/');
    });
    this.upBtn.addEventListener('click', () => void this.open(parentPath(this.cwd)));
    this.refreshBtn.addEventListener('click', () => void this.open(this.cwd));

    const upload = h('form', { class: 'inline-form', 'aria-label': 'Upload files' }, field('File to upload', this.fileInput), this.uploadBtn);
    upload.addEventListener('submit', (ev) => {
      ev.preventDefault();
      void this.upload();
    });
    const mkdir = h('form', { class: 'inline-form', 'aria-label': 'Create folder' }, field('New folder name', this.folderInput), this.mkdirBtn);
    mkdir.addEventListener('submit', (ev) => {
      ev.preventDefault();
      void this.mkdir();
    });

    this.el = h(
      'div',
      { class: 'files-pane' },
      nav,
      h('div', { class: 'files-tools' }, upload, mkdir),
      this.err.el,
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { class: 'table files', 'data-testid': 'files-table', 'aria-label': 'Directory listing' },
          h('thead', null, h('tr', null, ['Name', 'Size', 'Mode', 'Owner', 'Modified', 'Actions'].map((t) => h('th', { scope: 'col' }, t)))),
          this.tbody,
        ),
      ),
    );
    this.pathInput.value = this.cwd;
  }

  show(): void {
    if (!this.loaded) {
      this.loaded = true;
      void this.open(this.cwd, true);
    }
  }

  async open(path: string, fallbackToRoot = false): Promise<void> {
    const seq = ++this.seq;
    this.err.clear();
    try {
      const entries = await this.api.listDir(this.id, path);
      if (seq !== this.seq) return;
      this.cwd = path;
      this.pathInput.value = path;
      this.render(entries);
    } catch (e) {
      if (seq !== this.seq) return;
      if (fallbackToRoot && e instanceof ApiError && e.status === 404 && path !== '/') {
        await this.open('/');
        return;
      }
      this.err.show(e, `Cannot list ${path}`);
    }
  }

  private render(entries: FileInfo[]): void {
    const sorted = [...entries].sort((a, b) => {
      const da = a.type === 'dir' ? 0 : 1;
      const db = b.type === 'dir' ? 0 : 1;
      return da - db || a.name.localeCompare(b.name);
    });
    if (sorted.length === 0) {
      mount(this.tbody, h('tr', { class: 'empty' }, h('td', { colspan: '6' }, 'Empty directory')));
      return;
    }
    mount(
      this.tbody,
      sorted.map((f) => {
        const isDir = f.type === 'dir';
        const nameCell = isDir || f.type === 'symlink'
          ? h('button', { type: 'button', class: 'link', onclick: () => void this.open(f.path) }, isDir ? `${f.name}/` : f.name)
          : h('span', null, f.name);
        const download = h('button', { type: 'button', class: 'small', 'aria-label': `Download ${f.name}` }, 'Download');
        download.addEventListener('click', () => void busy(download, '…', () => this.download(f)));
        const del = h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete ${f.name}` }, 'Delete');
        del.addEventListener('click', () => void this.remove(f, del));
        return h(
          'tr',
          { 'data-testid': 'file-row', 'data-name': f.name, 'data-type': f.type },
          h('td', { class: 'name' }, icon(f.type), nameCell, f.symlink_target ? h('span', { class: 'muted' }, ` → ${f.symlink_target}`) : null),
          h('td', { class: 'num' }, isDir ? '' : formatBytes(f.size)),
          h('td', { class: 'mono' }, formatMode(f.mode)),
          h('td', null, `${f.owner}:${f.group}`),
          h('td', { title: absoluteTime(f.modified_at) }, relativeTime(f.modified_at)),
          h('td', { class: 'row-actions' }, f.type === 'file' ? download : null, del),
        );
      }),
    );
  }

  private async download(f: FileInfo): Promise<void> {
    try {
      const blob = await this.api.download(this.id, f.path);
      const url = URL.createObjectURL(blob);
      const a = h('a', { href: url, download: f.name, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 30000);
    } catch (e) {
      this.err.show(e, `Cannot download ${f.path}`);
    }
  }

  private async upload(): Promise<void> {
    const files = Array.from(this.fileInput.files ?? []);
    if (files.length === 0) {
      this.err.show(new Error('choose a file first'), 'Upload');
      return;
    }
    this.err.clear();
    const dir = this.cwd;
    await busy(this.uploadBtn, 'Uploading…', async () => {
      for (const file of files) {
        try {
          await this.api.upload(this.id, joinPath(dir, file.name), file, file.name);
          toast(`Uploaded ${file.name} (${formatBytes(file.size)})`);
        } catch (e) {
          this.err.show(e, `Cannot upload ${file.name}`);
          break;
        }
      }
    });
    this.fileInput.value = '';
    await this.open(dir);
  }

  private async mkdir(): Promise<void> {
    const name = this.folderInput.value.trim();
    if (!name) return;
    const path = name.startsWith('/') ? name : joinPath(this.cwd, name);
    this.err.clear();
    try {
      await busy(this.mkdirBtn, 'Creating…', () => this.api.mkdir(this.id, path));
      this.folderInput.value = '';
      await this.open(this.cwd);
    } catch (e) {
      this.err.show(e, `Cannot create ${path}`);
    }
  }

  private async remove(f: FileInfo, btn: HTMLButtonElement): Promise<void> {
    const isDir = f.type === 'dir';
    if (!window.confirm(isDir ? `Delete the folder ${f.path} and everything in it?` : `Delete ${f.path}?`)) return;
    this.err.clear();
    try {
      await busy(btn, '…', () => this.api.remove(this.id, f.path, isDir));
      await this.open(this.cwd);
    } catch (e) {
      this.err.show(e, `Cannot delete ${f.path}`);
    }
  }

  dispose(): void {
    this.seq += 1;
  }
}
