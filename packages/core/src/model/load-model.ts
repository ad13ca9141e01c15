import { existsSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { ModelLoadError } from '../errors.js';
import type { ModelType } from '../config.js';
import type { GenerationDefaults, LoadedModel, ModelConfig, TensorData } from '../model-types.js';
import { SAFETENSORS_INDEX_FILE, SAFETENSORS_WEIGHTS_FILE, loadCheckpointWeights, readCheckpointIndex } from './checkpoint.js';
import type { CheckpointIndex } from './checkpoint.js';
import { parseGenerationConfig, parseModelConfig } from './hf-config.js';
import { readJsonObject } from './json-file.js';
import { TOKENIZER_CONFIG_FILE, loadTokenizer } from './tokenizer.js';

export const MODEL_CONFIG_FILE = 'config.json';
export const GENERATION_CONFIG_FILE = 'generation_config.json';

/**
 * The weight names and shapes an executor can rely on after `loadModel`, in Hugging Face's
 * own naming (so the transformers code reads as documentation):
 *
 * gpt2 — always with the `transformer.` prefix (checkpoints saved from GPT2Model lack it;
 * loadModel adds it). Linear weights are Conv1D, stored [in, out]:
 *   transformer.wte.weight [vocab, hidden]          transformer.wpe.weight [maxPos, hidden]
 *   transformer.h.{i}.ln_1.weight|bias [hidden]     transformer.h.{i}.ln_2.weight|bias [hidden]
 *   transformer.h.{i}.attn.c_attn.weight [hidden, 3*hidden]  .bias [3*hidden]  (q | k | v)
 *   transformer.h.{i}.attn.c_proj.weight [hidden, hidden]    .bias [hidden]
 *   transformer.h.{i}.mlp.c_fc.weight [hidden, inter]        .bias [inter]
 *   transformer.h.{i}.mlp.c_proj.weight [inter, hidden]      .bias [hidden]
 *   transformer.ln_f.weight|bias [hidden]
 *   The LM head is always tied to transformer.wte.weight; no lm_head.weight is returned.
 *
 * llama — with the `model.` prefix; nn.Linear weights are stored [out, in]:
 *   model.embed_tokens.weight [vocab, hidden]
 *   model.layers.{i}.input_layernorm.weight [hidden]
 *   model.layers.{i}.self_attn.q_proj.weight [heads*headDim, hidden]
 *   model.layers.{i}.self_attn.k_proj.weight [kvHeads*headDim, hidden]   (v_proj the same)
 *   model.layers.{i}.self_attn.o_proj.weight [hidden, heads*headDim]
 *   (+ .bias [out] on q/k/v/o when attentionBias)
 *   model.layers.{i}.post_attention_layernorm.weight [hidden]
 *   model.layers.{i}.mlp.gate_proj.weight [inter, hidden]   (up_proj the same)
 *   model.layers.{i}.mlp.down_proj.weight [hidden, inter]   (+ .bias when mlpBias)
 *   model.norm.weight [hidden]
 *   lm_head.weight [vocab, hidden] — only when not tieWordEmbeddings (tied: use embed_tokens).
 *
 * Nothing else is read (attention-mask buffers, rotary inv_freq, a tied lm_head copy).
 */
export function expectedWeightShapes(config: ModelConfig): Map<string, number[]> {
  const shapes = new Map<string, number[]>();
  const { hiddenSize: h, intermediateSize: inter, vocabSize: vocab } = config;
  if (config.architecture === 'gpt2') {
    shapes.set('transformer.wte.weight', [vocab, h]);
    shapes.set('transformer.wpe.weight', [config.maxPositionEmbeddings, h]);
    for (let i = 0; i < config.numLayers; i++) {
      const p = `transformer.h.${i}.`;
      shapes.set(`${p}ln_1.weight`, [h]);
      shapes.set(`${p}ln_1.bias`, [h]);
      shapes.set(`${p}attn.c_attn.weight`, [h, 3 * h]);
      shapes.set(`${p}attn.c_attn.bias`, [3 * h]);
      shapes.set(`${p}attn.c_proj.weight`, [h, h]);
      shapes.set(`${p}attn.c_proj.bias`, [h]);
      shapes.set(`${p}ln_2.weight`, [h]);
      shapes.set(`${p}ln_2.bias`, [h]);
      shapes.set(`${p}mlp.c_fc.weight`, [h, inter]);
      shapes.set(`${p}mlp.c_fc.bias`, [inter]);
      shapes.set(`${p}mlp.c_proj.weight`, [inter, h]);
      shapes.set(`${p}mlp.c_proj.bias`, [h]);
    }
    shapes.set('transformer.ln_f.weight', [h]);
    shapes.set('transformer.ln_f.bias', [h]);
    return shapes;
  }
  const q = config.numHeads * config.headDim;
  const kv = config.numKvHeads * config.headDim;
  shapes.set('model.embed_tokens.weight', [vocab, h]);
  for (let i = 0; i < config.numLayers; i++) {
    const p = `model.layers.${i}.`;
    shapes.set(`${p}input_layernorm.weight`, [h]);
    const linears: [string, number, number, boolean][] = [
      ['self_attn.q_proj', q, h, config.attentionBias],
      ['self_attn.k_proj', kv, h, config.attentionBias],
      ['self_attn.v_proj', kv, h, config.attentionBias],
      ['self_attn.o_proj', h, q, config.attentionBias],
      ['mlp.gate_proj', inter, h, config.mlpBias],
      ['mlp.up_proj', inter, h, config.mlpBias],
      ['mlp.down_proj', h, inter, config.mlpBias],
    ];
    for (const [name, out, inp, bias] of linears) {
      shapes.set(`${p}${name}.weight`, [out, inp]);
      if (bias) shapes.set(`${p}${name}.bias`, [out]);
    }
    shapes.set(`${p}post_attention_layernorm.weight`, [h]);
  }
  shapes.set('model.norm.weight', [h]);
  if (!config.tieWordEmbeddings) shapes.set('lm_head.weight', [vocab, h]);
  return shapes;
}

function describeShapeSource(config: ModelConfig): string {
  const c = config;
  return c.architecture === 'gpt2'
    ? `vocab_size=${c.vocabSize}, n_embd=${c.hiddenSize}, n_inner=${c.intermediateSize}, n_positions=${c.maxPositionEmbeddings}`
    : `vocab_size=${c.vocabSize}, hidden_size=${c.hiddenSize}, intermediate_size=${c.intermediateSize}, ` +
        `num_attention_heads=${c.numHeads}, num_key_value_heads=${c.numKvHeads}, head_dim=${c.headDim}`;
}

/**
 * Maps each canonical name to the name in the checkpoint, checking presence and shape
 * before any tensor data is read.
 */
function resolveCheckpointNames(config: ModelConfig, index: CheckpointIndex, dir: string): Map<string, string> {
  // GPT2Model checkpoints (e.g. openai-community/gpt2) store `wte.weight`, not `transformer.wte.weight`.
  const stripPrefix =
    config.architecture === 'gpt2' && !index.tensors.has('transformer.wte.weight') && index.tensors.has('wte.weight');
  const sourceOf = new Map<string, string>();
  for (const [name, shape] of expectedWeightShapes(config)) {
    const source = stripPrefix ? name.slice('transformer.'.length) : name;
    const info = index.tensors.get(source);
    if (!info) throw new ModelLoadError(`'${dir}': checkpoint has no tensor '${source}' (required by config.json)`);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new ModelLoadError(
        `'${dir}': tensor '${source}' has shape [${info.shape.join(', ')}], expected [${shape.join(', ')}] from config.json (${describeShapeSource(config)})`,
      );
    }
    sourceOf.set(name, source);
  }
  return sourceOf;
}

function readOptionalJson(path: string): Record<string, unknown> | null {
  return existsSync(path) ? readJsonObject(path) : null;
}

/** tokenizer_config.json's chat_template: a string, or the named list form (the 'default' entry, else the first). */
function pickChatTemplate(dir: string, tokenizerConfig: Record<string, unknown>): string | null {
  const value = tokenizerConfig.chat_template;
  if (typeof value === 'string') return value;
  if (Array.isArray(value) && value.length > 0) {
    const entries = value.filter(
      (e): e is { name?: unknown; template: string } => typeof e === 'object' && e !== null && typeof e.template === 'string',
    );
    const chosen = entries.find((e) => e.name === 'default') ?? entries[0];
    if (chosen) return chosen.template;
  }
  // transformers >= 4.50 saves the template beside tokenizer_config.json.
  const jinja = join(dir, 'chat_template.jinja');
  if (existsSync(jinja)) return readFileSync(jinja, 'utf8');
  return null;
}

/** `org/name` for a Hugging Face cache snapshot (models--org--name/snapshots/<rev>), else the directory name. */
function modelName(dir: string): string {
  const parent = dirname(dir);
  const repo = basename(dirname(parent));
  if (basename(parent) === 'snapshots' && repo.startsWith('models--')) {
    return repo.slice('models--'.length).split('--').join('/');
  }
  return basename(dir);
}

/** Whether `dir` looks like a loadable model directory: config.json plus safetensors weights. */
export function isModelDirectory(dir: string): boolean {
  try {
    if (!statSync(dir).isDirectory()) return false;
  } catch {
    return false;
  }
  return (
    existsSync(join(dir, MODEL_CONFIG_FILE)) &&
    (existsSync(join(dir, SAFETENSORS_WEIGHTS_FILE)) || existsSync(join(dir, SAFETENSORS_INDEX_FILE)))
  );
}

/**
 * Loads a Hugging Face model directory: config.json, model.safetensors (or the sharded
 * index), tokenizer.json, and tokenizer_config.json / generation_config.json when present.
 * Every weight the architecture needs is checked against the config before data is read;
 * weights come back under the canonical names of {@link expectedWeightShapes}.
 */
export async function loadModel(dir: string, modelType: ModelType = 'auto'): Promise<LoadedModel> {
  const root = resolve(dir);
  let isDir: boolean;
  try {
    isDir = statSync(root).isDirectory();
  } catch {
    throw new ModelLoadError(`model directory '${dir}' does not exist`);
  }
  if (!isDir) throw new ModelLoadError(`'${dir}' is not a directory (expected a Hugging Face model directory)`);
  const configPath = join(root, MODEL_CONFIG_FILE);
  if (!existsSync(configPath)) {
    throw new ModelLoadError(
      `'${dir}' has no ${MODEL_CONFIG_FILE}; a model directory holds config.json, ${SAFETENSORS_WEIGHTS_FILE} ` +
        `(or ${SAFETENSORS_INDEX_FILE} and its shards) and tokenizer.json`,
    );
  }
  const rawConfig = readJsonObject(configPath);
  const config = parseModelConfig(rawConfig, modelType);

  const generationRaw = readOptionalJson(join(root, GENERATION_CONFIG_FILE));
  const generationDefaults: GenerationDefaults = generationRaw ? parseGenerationConfig(generationRaw) : {};
  const tokenizerConfig = readOptionalJson(join(root, TOKENIZER_CONFIG_FILE)) ?? {};
  const tokenizer = loadTokenizer(root, {
    bosTokenId: config.bosTokenId,
    eosTokenIds: config.eosTokenIds,
  });
  if (tokenizer.vocabSize > config.vocabSize) {
    throw new ModelLoadError(
      `'${dir}': the tokenizer has ${tokenizer.vocabSize} tokens but config.json's vocab_size is ${config.vocabSize}`,
    );
  }

  const index = readCheckpointIndex(root);
  const sourceOf = resolveCheckpointNames(config, index, dir);
  const wanted = new Set(sourceOf.values());
  const read = loadCheckpointWeights(root, { filter: (name) => wanted.has(name) });
  const weights = new Map<string, TensorData>();
  for (const [canonical, source] of sourceOf) {
    const tensor = read.get(source);
    // Headers were validated above; a tensor vanishing in between means the files changed.
    if (!tensor) throw new ModelLoadError(`'${dir}': tensor '${source}' disappeared while loading`);
    weights.set(canonical, tensor);
  }

  return {
    dir: root,
    name: modelName(root),
    config,
    rawConfig,
    weights,
    tokenizer,
    generationDefaults,
    chatTemplate: pickChatTemplate(root, tokenizerConfig),
    tokenizerConfig,
  };
}
