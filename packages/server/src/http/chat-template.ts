import { Template } from '@huggingface/jinja';
import { RequestValidationError } from '@tinyserve/core';
import type { BackendLoadedModel } from './backend.js';
import type { ChatMessage } from './openai-requests.js';

/**
 * The template used when a model's tokenizer_config.json has no `chat_template` (GPT-2 and most
 * base models): plain "Role: content" turns separated by blank lines, ending with "Assistant:".
 * Generation then also stops at {@link FALLBACK_STOP}, where a base model would start the next turn.
 */
export const FALLBACK_CHAT_TEMPLATE =
  '{% for message in messages %}' +
  "{% if message['role'] == 'system' %}System{% elif message['role'] == 'user' %}User{% else %}Assistant{% endif %}" +
  ": {{ message['content'] }}\n\n" +
  '{% endfor %}' +
  '{% if add_generation_prompt %}Assistant:{% endif %}';

export const FALLBACK_STOP = '\nUser:';

export interface RenderedChat {
  prompt: string;
  /** True when the model has no template of its own and {@link FALLBACK_CHAT_TEMPLATE} was used. */
  usedFallback: boolean;
}

const SPECIAL_TOKENS = ['bos_token', 'eos_token', 'unk_token', 'pad_token', 'sep_token', 'cls_token', 'mask_token'] as const;

/** A special token in tokenizer_config.json is a string or an AddedToken object `{ content }`. */
function tokenText(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (value !== null && typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string') {
    return (value as { content: string }).content;
  }
  return undefined;
}

/** The model's own template: `chatTemplate`, else tokenizer_config's string or named-list form ('default'). */
export function modelChatTemplate(model: BackendLoadedModel): string | null {
  if (model.chatTemplate) return model.chatTemplate;
  const t = model.tokenizerConfig.chat_template;
  if (typeof t === 'string' && t.length > 0) return t;
  if (Array.isArray(t)) {
    const named = t as { name?: unknown; template?: unknown }[];
    const def = named.find((e) => e && e.name === 'default') ?? named[0];
    if (def && typeof def.template === 'string') return def.template;
  }
  return null;
}

const compiled = new Map<string, Template>();

function compile(source: string): Template {
  let template = compiled.get(source);
  if (!template) {
    template = new Template(source);
    // Models are few; a small cache bound keeps a misbehaving caller from growing it.
    if (compiled.size >= 16) compiled.clear();
    compiled.set(source, template);
  }
  return template;
}

/**
 * Renders chat messages into a prompt with the model's Jinja chat template
 * (`add_generation_prompt: true`, special tokens from tokenizer_config.json), as Hugging Face's
 * `apply_chat_template` does. A template error (e.g. "roles must alternate") is a 400 on `messages`.
 */
export function renderChat(model: BackendLoadedModel, messages: readonly ChatMessage[]): RenderedChat {
  const own = modelChatTemplate(model);
  const source = own ?? FALLBACK_CHAT_TEMPLATE;
  let template: Template;
  try {
    template = compile(source);
  } catch (error) {
    throw new RequestValidationError('messages', `the model's chat template cannot be parsed: ${(error as Error).message}`);
  }
  const context: Record<string, unknown> = {
    messages: messages.map((m) => ({ ...m })),
    add_generation_prompt: true,
  };
  for (const key of SPECIAL_TOKENS) {
    const text = tokenText(model.tokenizerConfig[key]);
    context[key] = text ?? '';
  }
  try {
    return { prompt: template.render(context), usedFallback: own === null };
  } catch (error) {
    throw new RequestValidationError('messages', `the chat template rejected these messages: ${(error as Error).message}`);
  }
}
