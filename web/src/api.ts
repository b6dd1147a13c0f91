// A small client for the warren REST API v1 (docs/api.md). Same origin as
// the console, so every path is root-absolute.

// The REST types are generated from the service's OpenAPI document
// (`web/openapi.json`, kept current by warren-server's `openapi` test) into
// `src/api-types.ts` by `npm run generate` (run by build, dev and typecheck).
import type { components } from './api-types';

type Schemas = components['schemas'];

export type SandboxState = Schemas['SandboxState'];
export type Sandbox = Schemas['Sandbox'];
export type Template = Schemas['Template'];
/** What a pause wrote (`POST /v1/sandboxes/{id}/pause`). */
export type PauseResult = Schemas['PauseResult'];
/** A snapshot template: clones are created with `template: name`. */
export type Snapshot = Schemas['Snapshot'];
export type ExecResult = Schemas['ExecResult'];
export type FileInfo = Schemas['FileInfo'];
export type FileKind = Schemas['FileKind'];
export type SandboxEvent = Schemas['Event'];
export type Health = Schemas['Health'];
export type CreateSandboxRequest = Schemas['CreateSandbox'];
export type ExecRequest = Schemas['ExecRequest'];
/** A sandbox's egress policy (`GET`/`PUT /v1/sandboxes/{id}/network`). */
export type NetworkPolicy = Schemas['NetworkPolicy'];
/** A TCP port something in a sandbox listens on (`GET /v1/sandboxes/{id}/ports`). */
export type ListeningPort = Schemas['ListeningPort'];

/** An error answered by the API (`{"code","message","hint"}`), or a network failure. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

const KEY_STORAGE = 'warren.apiKey';

export function storedKey(): string | null {
  return localStorage.getItem(KEY_STORAGE);
}

export function storeKey(key: string | null): void {
  if (key === null) localStorage.removeItem(KEY_STORAGE);
  else localStorage.setItem(KEY_STORAGE, key);
}

async function errorFrom(res: Response): Promise<ApiError> {
  const text = await res.text().catch(() => '');
  try {
    const body = JSON.parse(text) as { code?: unknown; message?: unknown; hint?: unknown };
    if (body && typeof body.message === 'string') {
      return new ApiError(
        res.status,
        typeof body.code === 'string' ? body.code : `http_${res.status}`,
        body.message,
        typeof body.hint === 'string' ? body.hint : undefined,
      );
    }
  } catch {
    // not JSON: fall through
  }
  const detail = text.trim().slice(0, 300);
  return new ApiError(
    res.status,
    `http_${res.status}`,
    `${res.status} ${res.statusText}${detail ? `: ${detail}` : ''}`,
  );
}

type Query = Record<string, string | number | boolean | undefined | null | string[]>;

function withQuery(path: string, query?: Query): string {
  if (!query) return path;
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v === undefined || v === null || v === '') continue;
    if (Array.isArray(v)) v.forEach((item) => params.append(k, item));
    else params.append(k, String(v));
  }
  const qs = params.toString();
  return qs ? `${path}?${qs}` : path;
}

const enc = encodeURIComponent;

export class Api {
  /** Called when the server answers 401: the key is wrong or revoked. */
  onUnauthorized: ((err: ApiError) => void) | null = null;

  constructor(readonly key: string) {}

  async request(
    method: string,
    path: string,
    opts: { query?: Query; json?: unknown; body?: BodyInit; signal?: AbortSignal } = {},
  ): Promise<Response> {
    const headers: Record<string, string> = { Authorization: `Bearer ${this.key}` };
    let body = opts.body;
    if (opts.json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(opts.json);
    }
    let res: Response;
    try {
      res = await fetch(withQuery(path, opts.query), { method, headers, body, signal: opts.signal });
    } catch (e) {
      if (e instanceof DOMException && e.name === 'AbortError') throw e;
      throw new ApiError(0, 'network', `cannot reach the warren server (${String(e)})`, 'is `warren up` running?');
    }
    if (!res.ok) {
      const err = await errorFrom(res);
      if (res.status === 401 && this.onUnauthorized) this.onUnauthorized(err);
      throw err;
    }
    return res;
  }

  async json<T>(method: string, path: string, opts: Parameters<Api['request']>[2] = {}): Promise<T> {
    const res = await this.request(method, path, opts);
    return (await res.json()) as T;
  }

  // --- service ---
  static async health(): Promise<Health> {
    const res = await fetch('/health');
    if (!res.ok) throw await errorFrom(res);
    return (await res.json()) as Health;
  }

  // --- sandboxes ---
  async listSandboxes(state?: string): Promise<Sandbox[]> {
    const r = await this.json<Schemas['SandboxList']>('GET', '/v1/sandboxes', { query: { state } });
    return r.sandboxes;
  }
  getSandbox(id: string): Promise<Sandbox> {
    return this.json('GET', `/v1/sandboxes/${enc(id)}`);
  }
  createSandbox(req: CreateSandboxRequest, signal?: AbortSignal): Promise<Sandbox> {
    return this.json('POST', '/v1/sandboxes', { json: req, signal });
  }
  async killSandbox(id: string): Promise<void> {
    await this.request('DELETE', `/v1/sandboxes/${enc(id)}`);
  }
  setTimeout(id: string, timeout_secs: number): Promise<Sandbox> {
    return this.json('POST', `/v1/sandboxes/${enc(id)}/timeout`, { json: { timeout_secs } satisfies Schemas['SetTimeout'] });
  }
  pause(id: string): Promise<PauseResult> {
    return this.json('POST', `/v1/sandboxes/${enc(id)}/pause`);
  }
  resume(id: string): Promise<Sandbox> {
    return this.json('POST', `/v1/sandboxes/${enc(id)}/resume`);
  }
  async logs(id: string, tailBytes = 65536): Promise<string> {
    const res = await this.request('GET', `/v1/sandboxes/${enc(id)}/logs`, { query: { tail_bytes: tailBytes } });
    return res.text();
  }
  async events(id: string): Promise<SandboxEvent[]> {
    const r = await this.json<Schemas['EventList']>('GET', `/v1/sandboxes/${enc(id)}/events`);
    return r.events;
  }

  network(id: string): Promise<NetworkPolicy> {
    return this.json('GET', `/v1/sandboxes/${enc(id)}/network`);
  }
  setNetwork(id: string, policy: NetworkPolicy): Promise<NetworkPolicy> {
    return this.json('PUT', `/v1/sandboxes/${enc(id)}/network`, { json: policy });
  }
  async listeningPorts(id: string): Promise<ListeningPort[]> {
    const r = await this.json<Schemas['ListeningPortList']>('GET', `/v1/sandboxes/${enc(id)}/ports`);
    return r.ports;
  }
  setPublicPorts(id: string, ports: number[]): Promise<Sandbox> {
    return this.json('PUT', `/v1/sandboxes/${enc(id)}/public-ports`, { json: { ports } satisfies Schemas['PublicPorts'] });
  }

  // --- templates ---
  async templates(): Promise<Template[]> {
    const r = await this.json<Schemas['TemplateList']>('GET', '/v1/templates');
    return r.templates;
  }

  // --- snapshots ---
  createSnapshot(id: string, name: string): Promise<Snapshot> {
    return this.json('POST', `/v1/sandboxes/${enc(id)}/snapshots`, { json: { name } satisfies Schemas['CreateSnapshot'] });
  }
  async snapshots(): Promise<Snapshot[]> {
    const r = await this.json<Schemas['SnapshotList']>('GET', '/v1/snapshots');
    return r.snapshots;
  }
  async deleteSnapshot(name: string): Promise<void> {
    await this.request('DELETE', `/v1/snapshots/${enc(name)}`);
  }

  // --- processes ---
  exec(id: string, req: ExecRequest): Promise<ExecResult> {
    return this.json('POST', `/v1/sandboxes/${enc(id)}/exec`, { json: req });
  }

  // --- files ---
  async listDir(id: string, path: string): Promise<FileInfo[]> {
    const r = await this.json<Schemas['FileList']>('GET', `/v1/sandboxes/${enc(id)}/files/list`, {
      query: { path, depth: 0 },
    });
    return r.entries;
  }
  async download(id: string, path: string): Promise<Blob> {
    const res = await this.request('GET', `/v1/sandboxes/${enc(id)}/files`, { query: { path } });
    return res.blob();
  }
  upload(id: string, path: string, file: Blob, fileName: string): Promise<FileInfo> {
    // Field order matters: the server reads `path` before the bytes.
    const form = new FormData();
    form.append('path', path);
    form.append('file', file, fileName);
    return this.json('POST', `/v1/sandboxes/${enc(id)}/files`, { body: form });
  }
  mkdir(id: string, path: string): Promise<FileInfo> {
    return this.json('POST', `/v1/sandboxes/${enc(id)}/files/mkdir`, { json: { path, parents: true } satisfies Schemas['MakeDir'] });
  }
  async remove(id: string, path: string, recursive: boolean): Promise<void> {
    await this.request('DELETE', `/v1/sandboxes/${enc(id)}/files`, { query: { path, recursive } });
  }

  // --- websockets ---
  /** URL of the PTY WebSocket; browsers cannot set headers, so the key goes in the query. */
  ptyUrl(id: string, cols: number, rows: number): string {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const q = new URLSearchParams({ cols: String(cols), rows: String(rows), api_key: this.key });
    return `${proto}//${location.host}/v1/sandboxes/${enc(id)}/pty?${q}`;
  }
}

export function describeError(e: unknown): { message: string; code?: string; hint?: string } {
  if (e instanceof ApiError) return { message: e.message, code: e.code, hint: e.hint };
  if (e instanceof Error) return { message: e.message };
  return { message: String(e) };
}
