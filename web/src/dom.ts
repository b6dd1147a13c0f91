// Tiny DOM helpers: the console is plain TypeScript, no framework.

import { describeError } from './api';

type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, unknown>;

/**
 * Create an element. Attributes: `class`, `text`, `on<event>` handlers,
 * `dataset` object, boolean properties (disabled, checked...) and plain
 * attributes (aria-*, data-testid, for, ...).
 */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs | null = null,
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = String(v);
      else if (k === 'text') el.textContent = String(v);
      else if (k.startsWith('on') && typeof v === 'function') {
        el.addEventListener(k.slice(2).toLowerCase(), v as EventListener);
      } else if (k === 'value' || k === 'checked' || k === 'disabled' || k === 'selected' || k === 'hidden') {
        (el as unknown as Record<string, unknown>)[k] = v;
      } else if (v === true) el.setAttribute(k, '');
      else el.setAttribute(k, String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el: Element, children: (Child | Child[])[]): void {
  for (const c of children) {
    if (Array.isArray(c)) append(el, c);
    else if (c === null || c === undefined || c === false) continue;
    else el.append(c instanceof Node ? c : String(c));
  }
}

/** Replace all children of `el`. */
export function mount(el: Element, ...children: (Child | Child[])[]): void {
  el.replaceChildren();
  append(el, children);
}

let uid = 0;
/** A fresh id for label/input pairs. */
export function nextId(prefix = 'f'): string {
  uid += 1;
  return `${prefix}-${uid}`;
}

/** A label + input pair (the label is linked with `for`, so tests can use getByLabel). */
export function field(
  label: string,
  input: HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement,
  help?: string,
): HTMLElement {
  if (!input.id) input.id = nextId();
  return h(
    'div',
    { class: 'field' },
    h('label', { for: input.id }, label),
    input,
    help ? h('small', { class: 'help' }, help) : null,
  );
}

/** A box that shows an API error (message, code, hint) or nothing. */
export class ErrorBox {
  readonly el = h('div', { class: 'error', role: 'alert', hidden: true });

  constructor(testid?: string) {
    if (testid) this.el.setAttribute('data-testid', testid);
  }

  show(e: unknown, prefix?: string): void {
    const { message, code, hint } = describeError(e);
    mount(
      this.el,
      h('strong', null, prefix ? `${prefix}: ` : ''),
      message,
      code ? ' ' : null,
      code ? h('code', { class: 'code', title: 'error code' }, code) : null,
      hint ? h('div', { class: 'hint' }, `Hint: ${hint}`) : null,
    );
    this.el.hidden = false;
  }

  clear(): void {
    this.el.hidden = true;
    this.el.replaceChildren();
  }
}

/** Run `fn` with the button disabled (and a busy label) while it runs. */
export async function busy<T>(button: HTMLButtonElement, label: string, fn: () => Promise<T>): Promise<T> {
  const old = button.textContent;
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  button.textContent = label;
  try {
    return await fn();
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
    button.textContent = old;
  }
}

/** A transient notice in the bottom corner. */
export function toast(message: string, kind: 'info' | 'error' = 'info'): void {
  let area = document.getElementById('toasts');
  if (!area) {
    area = h('div', { id: 'toasts', 'aria-live': 'polite' });
    document.body.append(area);
  }
  const t = h('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, message);
  area.append(t);
  setTimeout(() => t.remove(), kind === 'error' ? 8000 : 4000);
}
