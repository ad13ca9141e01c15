import { describe, expect, it } from 'vitest';
import { normalizeRequest } from './request-validation.js';
import { RequestValidationError } from './errors.js';

describe('normalizeRequest', () => {
  it('fills the seed example defaults', () => {
    const r = normalizeRequest({ prompt: 'hi' });
    expect(r).toMatchObject({ maxTokens: 100, temperature: 0.7, topP: 1, topK: 0, stop: [], priority: 'normal', echo: false });
  });

  it('accepts token id prompts and a single stop string', () => {
    const r = normalizeRequest({ prompt: [1, 2, 3], stop: '\n' });
    expect(r.prompt).toEqual([1, 2, 3]);
    expect(r.stop).toEqual(['\n']);
  });

  it.each([
    [{ prompt: '' }, /prompt: must not be empty/],
    [{ prompt: 5 }, /prompt: must be a string or an array/],
    [{ prompt: [1, -2] }, /prompt\[1\]/],
    [{ prompt: 'x', maxTokens: -1 }, /maxTokens: must be in \[0/],
    [{ prompt: 'x', maxTokens: 1.5 }, /maxTokens: must be an integer/],
    [{ prompt: 'x', temperature: -0.1 }, /temperature/],
    [{ prompt: 'x', topP: 0 }, /topP: must be in \(0, 1\]/],
    [{ prompt: 'x', stop: [''] }, /stop\[0\]/],
    [{ prompt: 'x', priority: 'urgent' }, /priority/],
    [{ prompt: 'x', sessionId: 'a b' }, /sessionId/],
    [{ prompt: 'x', maxToken: 3 }, /maxToken: is not a request field/],
  ])('rejects %j', (request, message) => {
    expect(() => normalizeRequest(request as never)).toThrow(message);
    expect(() => normalizeRequest(request as never)).toThrow(RequestValidationError);
  });
});
