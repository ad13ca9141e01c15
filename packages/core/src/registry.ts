import { RegistryError } from './errors.js';

/**
 * A by-name registry for swappable parts (backends, selection policies, plugins).
 * A lookup of an unknown name lists the known ones, so a rejected configuration says why.
 */
export class Registry<T> {
  private readonly entries = new Map<string, T>();
  constructor(readonly kind: string) {}

  register(name: string, entry: T, options: { replace?: boolean } = {}): void {
    if (!/^[a-z0-9][a-z0-9_.-]*$/i.test(name)) {
      throw new RegistryError(`${this.kind} name '${name}' is invalid: use letters, digits, '_', '.', '-'`);
    }
    if (this.entries.has(name) && !options.replace) {
      throw new RegistryError(`${this.kind} '${name}' is already registered`);
    }
    this.entries.set(name, entry);
  }

  unregister(name: string): boolean {
    return this.entries.delete(name);
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  get(name: string): T {
    const entry = this.entries.get(name);
    if (entry === undefined) {
      const known = [...this.entries.keys()].sort().join(', ') || 'none';
      throw new RegistryError(`unknown ${this.kind} '${name}' (registered: ${known})`);
    }
    return entry;
  }

  names(): string[] {
    return [...this.entries.keys()];
  }
}
