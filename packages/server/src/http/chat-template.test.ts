import { describe, expect, it } from 'vitest';
import { FALLBACK_CHAT_TEMPLATE, modelChatTemplate, renderChat } from './chat-template.js';
import { FakeTokenizer } from './fake-backend.js';

const tokenizer = new FakeTokenizer();

// TinyLlama-1.1B-Chat's template (Zephyr style), as shipped in its tokenizer_config.json.
const ZEPHYR =
  "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n" +
  "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n" +
  "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n" +
  "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

describe('renderChat', () => {
  it("renders a model's template with add_generation_prompt and its special tokens", () => {
    const model = { tokenizer, chatTemplate: ZEPHYR, tokenizerConfig: { eos_token: '</s>', bos_token: '<s>' } };
    const out = renderChat(model, [
      { role: 'system', content: 'Be kind.' },
      { role: 'user', content: 'Hello' },
    ]);
    expect(out).toEqual({ prompt: '<|system|>\nBe kind.</s>\n<|user|>\nHello</s>\n<|assistant|>\n', usedFallback: false });
  });

  it('reads the template from tokenizer_config.json, in the string and the named-list forms', () => {
    const t = '{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}';
    expect(modelChatTemplate({ tokenizer, chatTemplate: null, tokenizerConfig: { chat_template: t } })).toBe(t);
    const listed = { chat_template: [{ name: 'tool_use', template: 'x' }, { name: 'default', template: t }] };
    expect(modelChatTemplate({ tokenizer, chatTemplate: null, tokenizerConfig: listed })).toBe(t);
    expect(renderChat({ tokenizer, chatTemplate: null, tokenizerConfig: listed }, [{ role: 'user', content: 'hi' }]).prompt).toBe('[user]hi');
    expect(modelChatTemplate({ tokenizer, chatTemplate: null, tokenizerConfig: {} })).toBeNull();
  });

  it('falls back to plain Role: content turns when the model has no template', () => {
    const out = renderChat({ tokenizer, chatTemplate: null, tokenizerConfig: {} }, [
      { role: 'system', content: 'S' },
      { role: 'user', content: 'U' },
      { role: 'assistant', content: 'A' },
      { role: 'user', content: 'U2' },
    ]);
    expect(out.usedFallback).toBe(true);
    expect(out.prompt).toBe('System: S\n\nUser: U\n\nAssistant: A\n\nUser: U2\n\nAssistant:');
    expect(FALLBACK_CHAT_TEMPLATE).toContain('add_generation_prompt');
  });

  it('reports template errors against messages', () => {
    const bad = { tokenizer, chatTemplate: '{% for m in messages %}{{ m.content', tokenizerConfig: {} };
    expect(() => renderChat(bad, [{ role: 'user', content: 'x' }])).toThrow(/messages: the model's chat template cannot be parsed/);
  });
});
