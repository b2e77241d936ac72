import { invalidInput } from './errors.ts';

const ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** Validates a session or task id: safe as a file name and in `~`-separated names. */
export function validateId(kind: 'session' | 'task', id: string): string {
  if (!ID_RE.test(id) || id.includes('..')) {
    throw invalidInput(
      `${kind} id ${JSON.stringify(id.length > 80 ? `${id.slice(0, 80)}...` : id)} is not valid`,
      'use 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit',
    );
  }
  return id;
}

const ALPHABET = '0123456789abcdefghjkmnpqrstvwxyz';

/** A random lowercase base32 string of `n` characters. */
export function randomString(n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += ALPHABET[Math.floor(Math.random() * 32)];
  return s;
}

/** A fresh task id like `t-7k2m9q4x`. */
export function newTaskId(): string {
  return `t-${randomString(8)}`;
}

let orderCounter = 0;

/** A sort key that orders by creation time; unique across processes through the random tail. */
export function newOrderKey(nowMs: number): string {
  orderCounter = (orderCounter + 1) % 1_679_616;
  return nowMs.toString(36).padStart(9, '0') + orderCounter.toString(36).padStart(4, '0') + randomString(4);
}

/** A lease token for one claim. */
export function newLeaseToken(): string {
  return randomString(10);
}
