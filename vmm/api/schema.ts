// Field-level validation of JSON request bodies and config-file sections: unknown fields,
// missing fields, wrong types and ranges each get a message that names the field. Owns the
// checking only; what a valid body means is resources.ts's business.

import { TsvmmError } from '../../lib/errors';

export class ValidationError extends TsvmmError {}

export type Field =
  | { type: 'string'; required?: boolean; nonEmpty?: boolean; oneOf?: readonly string[] }
  | { type: 'integer'; required?: boolean; min?: number; max?: number }
  | { type: 'boolean'; required?: boolean }
  | { type: 'object'; required?: boolean }
  /** Any JSON value; the caller checks it (e.g. an integer or {"hex": ...}). */
  | { type: 'any'; required?: boolean };

export type Spec = Record<string, Field>;

type ValueOf<F extends Field> = F extends { type: 'string' } ? string
  : F extends { type: 'integer' } ? number
  : F extends { type: 'boolean' } ? boolean
  : F extends { type: 'object' } ? Record<string, unknown>
  : unknown;

/** The checked object's type: required fields present, the others optional. */
export type Checked<S extends Spec> =
  { [K in keyof S as S[K] extends { required: true } ? K : never]: ValueOf<S[K]> } &
  { [K in keyof S as S[K] extends { required: true } ? never : K]?: ValueOf<S[K]> };

export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'an integer' : 'a number';
  return typeof v === 'object' ? 'an object' : `a ${typeof v}`;
}

export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Checks `value` against `spec`; `where` prefixes messages (e.g. "machine-config"). */
export function check<S extends Spec>(where: string, value: unknown, spec: S): Checked<S> {
  if (!isPlainObject(value)) throw new ValidationError(`${where}: expected a JSON object, got ${describe(value)}`);
  for (const k of Object.keys(value)) {
    if (!Object.hasOwn(spec, k)) throw new ValidationError(`${where}: unknown field '${k}' (allowed: ${Object.keys(spec).join(', ')})`);
  }
  for (const [k, f] of Object.entries(spec)) {
    const v = value[k];
    const name = `${where}.${k}`;
    if (v === undefined) {
      if (f.required) throw new ValidationError(`${name}: missing required field`);
      continue;
    }
    switch (f.type) {
      case 'string':
        if (typeof v !== 'string') throw new ValidationError(`${name}: expected a string, got ${describe(v)}`);
        if (f.nonEmpty && v === '') throw new ValidationError(`${name}: must not be empty`);
        if (f.oneOf && !f.oneOf.includes(v)) throw new ValidationError(`${name}: '${v}' is not one of ${f.oneOf.join(', ')}`);
        break;
      case 'integer':
        if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw new ValidationError(`${name}: expected an integer, got ${describe(v)}`);
        if (f.min !== undefined && v < f.min) throw new ValidationError(`${name}: ${v} is below the minimum ${f.min}`);
        if (f.max !== undefined && v > f.max) throw new ValidationError(`${name}: ${v} is above the maximum ${f.max}`);
        break;
      case 'boolean':
        if (typeof v !== 'boolean') throw new ValidationError(`${name}: expected a boolean, got ${describe(v)}`);
        break;
      case 'object':
        if (!isPlainObject(v)) throw new ValidationError(`${name}: expected an object, got ${describe(v)}`);
        break;
      case 'any':
        break;
    }
  }
  return value as Checked<S>;
}
