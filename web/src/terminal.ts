// Interactive terminal over the PTY WebSocket:
//   GET (WebSocket) /v1/sandboxes/{id}/pty?cols=&rows=&api_key=
// Binary frames carry raw terminal bytes both ways; the client sends text
// frames {"type":"resize","cols","rows"}; the server sends a text frame
// {"type":"exit","exit_code","signal"} when the shell ends, then closes.

import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import type { Api } from './api';
import { h } from './dom';

type Status = 'idle' | 'connecting' | 'connected' | 'exited' | 'closed' | 'error';

export class TerminalPane {
  readonly el: HTMLElement;
  private readonly host = h('div', { class: 'term-host', 'data-testid': 'terminal', role: 'region', 'aria-label': 'Terminal' });
  private readonly statusEl = h('span', { class: 'term-status', role: 'status', 'data-testid': 'terminal-status' });
  private readonly reconnectBtn = h('button', { type: 'button', class: 'small' }, 'Reconnect');
  private term: Terminal | null = null;
  private fit: FitAddon | null = null;
  private ws: WebSocket | null = null;
  private observer: ResizeObserver | null = null;
  private fitTimer: number | undefined;
  private readonly encoder = new TextEncoder();
  private disposed = false;
  status: Status = 'idle';

  constructor(
    private readonly api: Api,
    private readonly id: string,
    private readonly whyClosed: () => Promise<string | null>,
  ) {
    this.reconnectBtn.addEventListener('click', () => this.connect());
    this.el = h(
      'div',
      { class: 'terminal-pane' },
      h('div', { class: 'pane-toolbar' }, this.statusEl, h('span', { class: 'spacer' }), this.reconnectBtn),
      this.host,
    );
    this.setStatus('idle', 'not connected');
  }

  /** Called when the tab becomes visible (xterm needs a laid-out container). */
  show(): void {
    if (!this.term) {
      const term = new Terminal({
        cursorBlink: true,
        fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
        fontSize: 14,
        scrollback: 5000,
        theme: { background: '#0f1419', foreground: '#e6e1cf' },
      });
      const fit = new FitAddon();
      term.loadAddon(fit);
      term.open(this.host);
      this.term = term;
      this.fit = fit;
      this.safeFit();
      term.onData((data) => this.sendBytes(this.encoder.encode(data)));
      term.onBinary((data) => {
        const bytes = new Uint8Array(data.length);
        for (let i = 0; i < data.length; i += 1) bytes[i] = data.charCodeAt(i) & 0xff;
        this.sendBytes(bytes);
      });
      term.onResize(({ cols, rows }) => {
        if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: 'resize', cols, rows }));
      });
      this.observer = new ResizeObserver(() => {
        window.clearTimeout(this.fitTimer);
        this.fitTimer = window.setTimeout(() => this.safeFit(), 50);
      });
      this.observer.observe(this.host);
      // Connect once the first layout has happened, so the PTY starts with
      // the fitted size.
      requestAnimationFrame(() => {
        this.safeFit();
        this.connect();
      });
    } else {
      this.safeFit();
    }
    this.term.focus();
  }

  private safeFit(): void {
    if (!this.fit || this.host.offsetParent === null) return; // hidden: keep the last size
    try {
      this.fit.fit();
    } catch {
      // not laid out yet
    }
  }

  private sendBytes(bytes: Uint8Array): void {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(bytes);
  }

  private setStatus(status: Status, text: string): void {
    this.status = status;
    this.statusEl.textContent = text;
    this.statusEl.dataset.status = status;
    this.reconnectBtn.hidden = status === 'connecting' || status === 'connected' || status === 'idle';
  }

  connect(): void {
    if (!this.term || this.disposed) return;
    this.ws?.close();
    const term = this.term;
    const ws = new WebSocket(this.api.ptyUrl(this.id, term.cols, term.rows));
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    let opened = false;
    let exited = false;
    this.setStatus('connecting', 'connecting…');
    ws.addEventListener('open', () => {
      opened = true;
      this.setStatus('connected', 'connected');
      // The size may have changed while connecting.
      ws.send(JSON.stringify({ type: 'resize', cols: term.cols, rows: term.rows }));
      term.focus();
    });
    ws.addEventListener('message', (ev) => {
      if (typeof ev.data === 'string') {
        let msg: { type?: string; exit_code?: number | null; signal?: number | null; message?: string; code?: string };
        try {
          msg = JSON.parse(ev.data);
        } catch {
          term.write(ev.data);
          return;
        }
        if (msg.type === 'exit') {
          exited = true;
          const how = msg.signal != null ? `signal ${msg.signal}` : `code ${msg.exit_code ?? '?'}`;
          term.write(`\r\n\x1b[2m[shell exited with ${how}]\x1b[0m\r\n`);
          this.setStatus('exited', `shell exited (${how})`);
        } else if (msg.type === 'error') {
          term.write(`\r\n\x1b[31m[error: ${msg.message ?? msg.code ?? 'unknown'}]\x1b[0m\r\n`);
          this.setStatus('error', `error: ${msg.message ?? msg.code}`);
        }
      } else {
        term.write(new Uint8Array(ev.data as ArrayBuffer));
      }
    });
    ws.addEventListener('close', (ev) => {
      if (this.ws !== ws || this.disposed) return;
      if (exited) return;
      if (!opened) {
        this.setStatus('error', 'could not connect');
        void this.whyClosed().then((why) => {
          if (this.ws === ws) this.setStatus('error', `could not connect${why ? `: ${why}` : ''}`);
        });
        return;
      }
      const reason = ev.reason ? `: ${ev.reason}` : '';
      term.write(`\r\n\x1b[2m[disconnected${reason}]\x1b[0m\r\n`);
      this.setStatus('closed', `disconnected (${ev.code}${reason})`);
    });
  }

  /** Reconnects when the connection is gone (e.g. after a pause and resume). */
  reconnectIfDown(): void {
    if (this.status === 'closed' || this.status === 'error') this.connect();
  }

  dispose(): void {
    this.disposed = true;
    this.observer?.disconnect();
    window.clearTimeout(this.fitTimer);
    this.ws?.close();
    this.term?.dispose();
  }
}
