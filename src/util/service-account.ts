import { createPrivateKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { CodedError } from './errors.ts';

/** A Google service-account JSON key, checked. `text` is the file as given (for `_json_key`). */
export interface ServiceAccountKey {
  client_email: string;
  private_key: string;
  private_key_id?: string;
  project_id?: string;
  /** The whole key, trimmed: what Artifact Registry's `_json_key` login sends. */
  text: string;
  json: Record<string, unknown>;
}

export class KeyFileError extends CodedError<'BAD_KEY'> {}

/**
 * Reads and checks a service-account key before anything uses it, so a wrong file fails the same
 * way for GCS and the registry, with a message naming the file — never its content (JSON.parse
 * errors quote the text, so not those).
 */
export async function loadServiceAccountKey(path: string): Promise<ServiceAccountKey> {
  const bad = (why: string) => new KeyFileError('BAD_KEY', `${path} is not a service-account JSON key (${why}); download one with: gcloud iam service-accounts keys create`);
  let text: string;
  try {
    text = (await readFile(path, 'utf8')).trim();
  } catch (err) {
    throw new KeyFileError('BAD_KEY', `cannot read the service-account key ${path}: ${(err as NodeJS.ErrnoException).code ?? 'unreadable'}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw bad('not JSON');
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw bad('not a JSON object');
  const k = json as Record<string, unknown>;
  if (k.type !== 'service_account') throw bad(typeof k.type === 'string' ? `its type is "${k.type.slice(0, 40)}", not "service_account"` : 'no "type": "service_account"');
  if (typeof k.client_email !== 'string' || !k.client_email.includes('@')) throw bad('no client_email');
  if (typeof k.private_key !== 'string' || k.private_key === '') throw bad('no private_key');
  try {
    createPrivateKey(k.private_key);
  } catch {
    throw bad('its private_key is not a PEM private key');
  }
  return {
    client_email: k.client_email,
    private_key: k.private_key,
    ...(typeof k.private_key_id === 'string' ? { private_key_id: k.private_key_id } : {}),
    ...(typeof k.project_id === 'string' ? { project_id: k.project_id } : {}),
    text,
    json: k,
  };
}
