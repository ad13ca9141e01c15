/** Architectures the executors implement. */
export type Architecture = 'gpt2' | 'llama';

/** Element types a safetensors file may hold that TinyServe reads. */
export type SafetensorsDtype = 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

/**
 * A model's hyper-parameters, normalised from Hugging Face `config.json` so that the
 * executors never read architecture-specific key names.
 */
export interface ModelConfig {
  architecture: Architecture;
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  /** Key/value heads: equal to numHeads (MHA), fewer (GQA) or 1 (MQA). */
  numKvHeads: number;
  headDim: number;
  intermediateSize: number;
  maxPositionEmbeddings: number;
  /** LayerNorm epsilon (GPT-2) or RMSNorm epsilon (LLaMA). */
  normEps: number;
  /** RoPE base (LLaMA); 0 where the architecture has learned positions (GPT-2). */
  ropeTheta: number;
  /** MLP activation: 'gelu_new' (GPT-2), 'silu' (LLaMA SwiGLU). */
  hiddenAct: string;
  /** Whether q/k/v/o projections carry biases (always for GPT-2; `attention_bias` for LLaMA). */
  attentionBias: boolean;
  /** Whether the MLP projections carry biases. */
  mlpBias: boolean;
  tieWordEmbeddings: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
  padTokenId: number | null;
  /** The dtype the checkpoint was saved in (`torch_dtype`), for information. */
  torchDtype: string | null;
}

/** One tensor read from a checkpoint, widened to float32 for the executors. */
export interface TensorData {
  /** dtype as stored in the file. */
  dtype: SafetensorsDtype;
  shape: number[];
  data: Float32Array;
}

/** Decoding defaults from `generation_config.json`, where present. */
export interface GenerationDefaults {
  temperature?: number;
  topP?: number;
  topK?: number;
  maxNewTokens?: number;
  eosTokenIds?: number[];
  bosTokenId?: number;
  repetitionPenalty?: number;
}

/** Incremental detokenizer: never emits half of a UTF-8 character or of a merged piece. */
export interface StreamDecoder {
  /** Adds one token; returns the text that became final (possibly ''). */
  push(tokenId: number): string;
  /** Returns whatever is still held back (at the end of a stream). */
  flush(): string;
}

export interface EncodeOptions {
  /** Add the tokenizer's special tokens (e.g. BOS for LLaMA). Default true. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  skipSpecialTokens?: boolean;
}

export interface Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  encode(text: string, options?: EncodeOptions): number[];
  decode(ids: ArrayLike<number>, options?: DecodeOptions): string;
  createStreamDecoder(options?: DecodeOptions): StreamDecoder;
  /** The token's text form (for logprob displays), or null for an id outside the vocabulary. */
  idToToken(id: number): string | null;
}

/** A model directory read from disk: everything an executor and the engine need. */
export interface LoadedModel {
  /** Directory the model was read from. */
  dir: string;
  /** A short name for listings (`/v1/models`): the directory name unless the config says otherwise. */
  name: string;
  config: ModelConfig;
  /** config.json as parsed, for anything not normalised. */
  rawConfig: Record<string, unknown>;
  weights: Map<string, TensorData>;
  tokenizer: Tokenizer;
  generationDefaults: GenerationDefaults;
  /** The Jinja chat template from tokenizer_config.json, where one is given. */
  chatTemplate: string | null;
  /** tokenizer_config.json as parsed ({} when absent). */
  tokenizerConfig: Record<string, unknown>;
}
