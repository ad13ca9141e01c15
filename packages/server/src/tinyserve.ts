import { randomUUID } from 'node:crypto';
import {
  ConfigError,
  ModelLoadError,
  TinyServeError,
  loadModel,
  normalizeRequest,
  resolveConfig,
  resolveModel,
} from '@tinyserve/core';
import type {
  Executor,
  LoadedModel,
  ModelType,
  NormalizedRequest,
  RequestDefaults,
  ResolveModelOptions,
  StreamEvent,
  TinyServeConfig,
  TinyServeRequest,
  TinyServeResponse,
} from '@tinyserve/core';
import { benchmarkAttention, createExecutor } from '@tinyserve/executor';
import type { BenchmarkAttentionParams, BenchmarkAttentionResult, BenchmarkMode } from '@tinyserve/executor';
import { kvPagesForMemory } from '@tinyserve/kv-retriever';
import { Engine, runThroughputBench } from '@tinyserve/scheduler';
import type { EngineHandle, EngineRequest, EngineResult, ThroughputBenchOptions, ThroughputRow } from '@tinyserve/scheduler';
import { createPluginManager } from '@tinyserve/plugins';
import type { PluginManager } from '@tinyserve/plugins';
import { MODEL_TINY_NAME, modelTinyDir } from '@tinyserve/model-tiny';

/** What `loadModel` reports about the model now being served. */
export interface ModelInfo {
  name: string;
  dir: string;
  architecture: string;
  parameters: number;
  executor: string;
  numKvPages: number;
  kvBytesPerPage: number;
  maxModelLen: number;
}

export interface TinyServeLogger {
  info(message: string): void;
  warn(message: string): void;
}

export interface TinyServeOptions {
  logger?: TinyServeLogger;
}

const GIB = 2 ** 30;

/**
 * Parameters of `attentionExecutor.benchmarkAttention`: those of the executor package's
 * `benchmarkAttention`, every one optional. Defaults: the head shape from the loaded model;
 * the executor serving it (else `config.executor`); `pageSize`, `kvCacheDtype` and
 * `attentionChunkSize` from the config. `mode` (default: the configured decode attention)
 * asks for one result; `modes` for one result per mode, on the same synthetic cache.
 */
export type AttentionBenchmarkOptions = Partial<BenchmarkAttentionParams> & { mode?: BenchmarkMode };

/** The seed's `tinyserve.attention_executor`. */
export interface AttentionExecutorApi {
  /** One result per mode of `params.modes`. */
  benchmarkAttention(params: AttentionBenchmarkOptions & { modes: BenchmarkMode[] }): Promise<BenchmarkAttentionResult[]>;
  /** One result: `params.mode`, or the configured decode attention (the seed's form). */
  benchmarkAttention(params?: Omit<AttentionBenchmarkOptions, 'modes'>): Promise<BenchmarkAttentionResult>;
}

const HEAD_FIELDS = ['numQHeads', 'numKvHeads', 'headDim'] as const;

/**
 * The library API: the seed's `TinyServe` class in TypeScript. Owns one model, its executor,
 * the engine loop and the plugin manager.
 */
export class TinyServe {
  readonly config: TinyServeConfig;
  readonly pluginManager: PluginManager;
  private readonly logger: TinyServeLogger;
  private model: LoadedModel | null = null;
  private executor: Executor | null = null;
  private engine: Engine | null = null;
  private info: ModelInfo | null = null;
  private totalRequests = 0;
  private failedRequests = 0;
  private totalLatencyMs = 0;
  private totalTtftMs = 0;
  private completedRequests = 0;

  constructor(config: Partial<TinyServeConfig> = {}, options: TinyServeOptions = {}) {
    this.config = resolveConfig(config);
    this.logger = options.logger ?? { info: () => {}, warn: (m) => process.emitWarning(m, 'TinyServeWarning') };
    this.pluginManager = createPluginManager(this.config);
  }

  /**
   * Loads a model directory in Hugging Face layout, or a Hugging Face id (`org/name[@revision]`)
   * from the local hub cache, downloading it only with `options.allowDownload`. Without a path,
   * the bundled default model (@tinyserve/model-tiny) is served. Replaces any model loaded before.
   */
  async loadModel(pathOrId?: string, modelType: ModelType = 'auto', options: ResolveModelOptions = {}): Promise<ModelInfo> {
    const dir = pathOrId === undefined ? modelTinyDir() : (await resolveModel(pathOrId, options)).dir;
    const model = await loadModel(dir, modelType);
    if (pathOrId === undefined) model.name = MODEL_TINY_NAME;
    const maxModelLen = Math.min(this.config.maxModelLen ?? model.config.maxPositionEmbeddings, model.config.maxPositionEmbeddings);
    const numKvPages = this.config.numKvPages ?? this.deriveNumKvPages(model, maxModelLen);
    const executor = await this.createExecutorWithFallback(model, numKvPages);
    await this.close();
    this.model = model;
    this.executor = executor;
    this.engine = new Engine({
      executor,
      tokenizer: model.tokenizer,
      config: this.config,
      hooks: this.pluginManager,
      maxModelLen,
      eosTokenIds: model.generationDefaults.eosTokenIds ?? model.config.eosTokenIds,
    });
    let parameters = 0;
    for (const t of model.weights.values()) parameters += t.data.length;
    this.info = {
      name: model.name,
      dir: model.dir,
      architecture: model.config.architecture,
      parameters,
      executor: executor.backend,
      numKvPages,
      kvBytesPerPage: executor.kvBytesPerPage,
      maxModelLen,
    };
    this.logger.info(`loaded ${model.name} (${model.config.architecture}, ${(parameters / 1e6).toFixed(1)}M parameters) on ${executor.backend}`);
    return this.info;
  }

  /** The model being served, or null before `loadModel`. */
  get modelInfo(): ModelInfo | null {
    return this.info;
  }

  get loadedModel(): LoadedModel | null {
    return this.model;
  }

  /** Generates a whole response. */
  async serve(request: TinyServeRequest): Promise<TinyServeResponse> {
    const { handle, normalized, promptIds } = this.submit(request);
    // Drain the stream so the engine is never blocked on a reader.
    for await (const _event of handle) {
      /* tokens are collected in the result */
    }
    return this.finish(await handle.result, normalized, promptIds);
  }

  /** Generates a response as a stream of token events, then one `done` event. */
  async *serveStream(request: TinyServeRequest): AsyncGenerator<StreamEvent, void, undefined> {
    const { handle, normalized, promptIds } = this.submit(request);
    for await (const event of handle) {
      yield { type: 'token', text: event.text, tokenId: event.tokenId, ...(event.logprob !== undefined ? { logprob: event.logprob } : {}) };
    }
    yield { type: 'done', response: this.finish(await handle.result, normalized, promptIds) };
  }

  /** Sessions, as the seed's `tinyserve.scheduler`: `listSessions()` gives ids, `getSessionInfo(id)` the details. */
  get scheduler(): {
    listSessions(): string[];
    getSessionInfo: Engine['getSessionInfo'];
    closeSession: Engine['closeSession'];
  } {
    const engine = this.requireEngine();
    return {
      listSessions: () => engine.listSessions().map((s) => s.sessionId),
      getSessionInfo: (id: string) => engine.getSessionInfo(id),
      closeSession: (id: string) => engine.closeSession(id),
    };
  }

  getPluginStats(): ReturnType<PluginManager['getPluginStats']> {
    return this.pluginManager.getPluginStats();
  }

  /** Statistics in the seed's shape (camelCased), plus the engine's own. */
  getStats(): TinyServeStats {
    const engineStats = this.engine?.getStats() ?? null;
    return {
      totalRequests: this.totalRequests,
      completedRequests: this.completedRequests,
      failedRequests: this.failedRequests,
      avgLatencyMs: this.completedRequests ? this.totalLatencyMs / this.completedRequests : 0,
      avgTimeToFirstTokenMs: this.completedRequests ? this.totalTtftMs / this.completedRequests : 0,
      kvHitRate: engineStats?.selection?.kvHitRate ?? 1,
      model: this.info,
      engine: engineStats,
      plugins: this.pluginManager.getPluginStats(),
    };
  }

  /**
   * Engine throughput and latency at several numbers of concurrent streams on the loaded model
   * (greedy, fixed-length random prompts). Each level gets a fresh executor with an empty KV pool.
   */
  async benchmarkThroughput(
    options: Omit<ThroughputBenchOptions, 'createExecutor' | 'tokenizer' | 'maxModelLen' | 'eosTokenIds'> = {},
  ): Promise<ThroughputRow[]> {
    const model = this.model;
    const info = this.info;
    if (!model || !info) throw new TinyServeError('invalid_request', 'no model is loaded: call loadModel() first');
    return runThroughputBench({
      ...options,
      createExecutor: () => this.createExecutorWithFallback(model, info.numKvPages),
      tokenizer: model.tokenizer,
      maxModelLen: info.maxModelLen,
      config: { ...this.config, ...options.config },
    });
  }

  /**
   * The seed's `attention_executor`: `benchmarkAttention({ inputSize, numPages, ... })` times
   * decode attention on a synthetic paged KV cache with the loaded model's head shape on its
   * executor (see {@link AttentionBenchmarkOptions}); results are plain data, with
   * `throughputTokensPerMs` as the seed prints it. Without a loaded model, `numQHeads`,
   * `numKvHeads` and `headDim` must be given.
   */
  get attentionExecutor(): AttentionExecutorApi {
    return {
      benchmarkAttention: ((params: AttentionBenchmarkOptions = {}) => this.benchmarkAttentionOf(params)) as AttentionExecutorApi['benchmarkAttention'],
    };
  }

  /** Stops accepting requests and waits for running ones to finish. */
  async drain(): Promise<void> {
    await this.engine?.drain();
  }

  /** Releases the model, the executor and the engine. */
  async close(): Promise<void> {
    if (this.engine) await this.engine.shutdown();
    this.executor?.dispose();
    this.engine = null;
    this.executor = null;
    this.model = null;
    this.info = null;
  }

  private submit(request: TinyServeRequest): { handle: EngineHandle; normalized: NormalizedRequest; promptIds: number[] } {
    const engine = this.requireEngine();
    const model = this.model as LoadedModel;
    const defaults: RequestDefaults = {
      maxTokens: model.generationDefaults.maxNewTokens ?? 100,
      temperature: model.generationDefaults.temperature ?? 0.7,
      topP: model.generationDefaults.topP ?? 1,
      topK: model.generationDefaults.topK ?? 0,
      seed: this.config.seed,
    };
    const normalized = normalizeRequest(request, defaults);
    const promptIds =
      typeof normalized.prompt === 'string'
        ? model.tokenizer.encode(normalized.prompt, { addSpecialTokens: normalized.addSpecialTokens })
        : normalized.prompt;
    const engineRequest: EngineRequest = {
      requestId: normalized.requestId ?? `req-${randomUUID()}`,
      promptTokenIds: promptIds,
      sampling: {
        temperature: normalized.temperature,
        topP: normalized.topP,
        topK: normalized.topK,
        seed: normalized.seed,
        maxTokens: normalized.maxTokens,
        stop: normalized.stop,
        stopTokenIds: [],
        ignoreEos: normalized.ignoreEos,
        logprobs: normalized.logprobs,
        promptLogprobs: normalized.echo,
      },
      sessionId: normalized.sessionId,
      priority: normalized.priority,
      signal: normalized.signal,
    };
    this.totalRequests += 1;
    try {
      const handle = engine.submit(engineRequest);
      handle.result.catch(() => {
        this.failedRequests += 1;
      });
      return { handle, normalized, promptIds };
    } catch (error) {
      this.failedRequests += 1;
      throw error;
    }
  }

  private finish(result: EngineResult, normalized: NormalizedRequest, promptIds: number[]): TinyServeResponse {
    this.completedRequests += 1;
    this.totalLatencyMs += result.timings.totalMs;
    this.totalTtftMs += result.timings.ttftMs;
    const response: TinyServeResponse = {
      requestId: result.requestId,
      generatedText: result.text,
      tokens: result.tokenIds,
      finishReason: result.finishReason,
      latencyMs: result.timings.totalMs,
      timeToFirstTokenMs: result.timings.ttftMs,
      usage: {
        promptTokens: result.usage.promptTokens,
        completionTokens: result.usage.completionTokens,
        totalTokens: result.usage.promptTokens + result.usage.completionTokens,
        cachedTokens: result.usage.cachedTokens,
      },
    };
    if (normalized.logprobs && result.logprobs) response.logprobs = result.logprobs;
    if (normalized.echo) {
      response.promptTokens = promptIds;
      response.promptLogprobs = result.promptLogprobs ?? promptIds.map(() => null);
    }
    if (result.sessionId !== undefined) response.sessionId = result.sessionId;
    return response;
  }

  private async benchmarkAttentionOf(params: AttentionBenchmarkOptions): Promise<BenchmarkAttentionResult | BenchmarkAttentionResult[]> {
    if (params === null || typeof params !== 'object' || Array.isArray(params)) {
      throw new ConfigError('params', 'must be an object such as { inputSize: 2048, numPages: 128 }');
    }
    const { mode, ...rest } = params;
    if (mode !== undefined && rest.modes !== undefined) throw new ConfigError('mode', 'give mode (one result) or modes (one result per mode), not both');
    const given = Object.fromEntries(Object.entries(rest).filter(([, v]) => v !== undefined)) as Partial<BenchmarkAttentionParams>;
    const c = this.model?.config;
    if (!c) {
      const missing = HEAD_FIELDS.filter((f) => given[f] === undefined);
      if (missing.length > 0) {
        throw new ConfigError(missing[0], `no model is loaded to take the head shape from: give ${missing.join(', ')}, or call loadModel() first`);
      }
    }
    const single = given.modes === undefined;
    const results = await benchmarkAttention({
      executor: this.info?.executor ?? this.config.executor,
      pageSize: this.config.pageSize,
      kvDtype: this.config.kvCacheDtype,
      chunkSize: this.config.attentionChunkSize,
      ...(c ? { numQHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim } : {}),
      ...given,
      modes: given.modes ?? [mode ?? this.configuredAttentionMode()],
    } as BenchmarkAttentionParams);
    return single ? results[0] : results;
  }

  /** The decode attention the config asks for: dense, or query-aware top-K at its ratio or budget. */
  private configuredAttentionMode(): BenchmarkMode {
    const c = this.config;
    if (c.selectionPolicy === 'dense') return { kind: 'dense' };
    return { kind: 'sparse', selectionRatio: c.selectionRatio, tokenBudget: c.tokenBudget, sinkPages: c.sinkPages };
  }

  private requireEngine(): Engine {
    if (!this.engine) throw new TinyServeError('invalid_request', 'no model is loaded: call loadModel() first');
    return this.engine;
  }

  private deriveNumKvPages(model: LoadedModel, maxModelLen: number): number {
    // KV (with its page metadata and int8 scales) gets what the memory target leaves after the
    // weights, held as float32, but never more than every admitted sequence could use at full length.
    const c = model.config;
    const memory = { numLayers: c.numLayers, pageSize: this.config.pageSize, numKvHeads: c.numKvHeads, headDim: c.headDim, dtype: this.config.kvCacheDtype };
    let weightBytes = 0;
    for (const t of model.weights.values()) weightBytes += t.data.byteLength;
    const pagesPerSeq = Math.ceil(maxModelLen / this.config.pageSize);
    const fits = kvPagesForMemory({ ...memory, bytes: Math.max(this.config.targetMemoryGb * GIB - weightBytes, 0) });
    if (fits < pagesPerSeq) {
      throw new ModelLoadError(
        `targetMemoryGb ${this.config.targetMemoryGb} leaves room for ${fits} KV pages after ${(weightBytes / GIB).toFixed(3)} GiB of weights: ` +
          `one ${maxModelLen}-token sequence needs ${pagesPerSeq}; raise targetMemoryGb, lower maxModelLen or set numKvPages`,
      );
    }
    return Math.min(fits, pagesPerSeq * this.config.maxNumSeqs);
  }

  private async createExecutorWithFallback(model: LoadedModel, numKvPages: number): Promise<Executor> {
    const options = {
      model,
      pageSize: this.config.pageSize,
      numKvPages,
      kvCacheDtype: this.config.kvCacheDtype,
      attentionChunkSize: this.config.attentionChunkSize,
      selection: {
        policy: this.config.selectionPolicy,
        selectionRatio: this.config.selectionRatio,
        tokenBudget: this.config.tokenBudget,
        sinkPages: this.config.sinkPages,
        denseLayers: this.config.denseLayers,
        useFusedKernel: this.config.useFusedKernel,
      },
    };
    try {
      return await createExecutor(this.config.executor, options);
    } catch (error) {
      if (error instanceof TinyServeError && error.code === 'backend_unavailable' && this.config.executor !== 'wasm') {
        this.logger.warn(`executor '${this.config.executor}' is unavailable (${error.message}); falling back to 'wasm'`);
        return createExecutor('wasm', options);
      }
      throw error;
    }
  }
}

export interface TinyServeStats {
  totalRequests: number;
  completedRequests: number;
  failedRequests: number;
  avgLatencyMs: number;
  avgTimeToFirstTokenMs: number;
  /** See docs/configuration.md: the share of resident KV pages decode attention read. */
  kvHitRate: number;
  model: ModelInfo | null;
  engine: ReturnType<Engine['getStats']> | null;
  plugins: ReturnType<PluginManager['getPluginStats']>;
}
