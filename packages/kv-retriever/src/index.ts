// block pool
export { BlockPool, ROOT_PREFIX_HASH, hashPageTokens } from './block-pool.js';
export type {
  BlockPoolOptions,
  BlockPoolStats,
  LookupPrefixOptions,
  PageCopy,
  PrefixMatch,
  PrepareWriteResult,
} from './block-pool.js';

// selection
export { PageTable, buildPageTableCsr, pagesForTokens } from './page-table.js';
export type { PageTableView, PageTableCsr, PageTableSnapshot } from './page-table.js';
export {
  PageMetadata,
  createPageMetadataLayer,
  pageMetadataLength,
  isPageMetadataEmpty,
  updatePageMetadata,
  rebuildPageMetadata,
  clearPageMetadata,
} from './page-metadata.js';
export type {
  PageMetadataLayer,
  UpdatePageMetadataParams,
  RebuildPageMetadataParams,
  ClearPageMetadataParams,
} from './page-metadata.js';
export { scorePages, gqaGroupSize, GQA_AGGREGATIONS } from './page-score.js';
export type { ScorePagesParams, GqaAggregation } from './page-score.js';
export {
  selectionBudgetPages,
  validateSelectionConfig,
  checkBudgetFitsForcedPages,
  checkSelectParams,
  denseSelection,
  selectionFromMask,
  chooseTopK,
  CHOSEN,
  EXCLUDED,
} from './selection-policy.js';
export type {
  SelectPagesParams,
  SelectPagesResult,
  SelectionPolicy,
  SelectionPolicyOptions,
  SelectionPolicyFactory,
} from './selection-policy.js';
export {
  selectionPolicies,
  createSelectionPolicy,
  createDensePolicy,
  createQuestPolicy,
  createStreamingPolicy,
  createRandomPolicy,
  createOraclePolicy,
} from './selection-policies.js';
export {
  pagedAttentionDecodeDense,
  sparsePagedAttention,
  packSelections,
  computePageAttentionMass,
  attentionMassRecall,
} from './sparse-attention.js';
export type {
  PagedAttentionDecodeParams,
  SparsePagedAttentionParams,
  HeadSelection,
  PageAttentionMassParams,
  AttentionMassRecallParams,
  AttentionMassRecallResult,
} from './sparse-attention.js';
export {
  KV_CACHE_DTYPES,
  KvCacheStorage,
  kvElementBytes,
  encodeFp16,
  decodeFp16,
  roundHalfToEven,
  quantizeInt8,
  dequantizeInt8,
  kvBytesPerPage,
  kvBytesPerToken,
  pageMetadataBytesPerPage,
  kvPagesForMemory,
} from './kv-format.js';
export type { Int8ScaleGranularity, KvMemoryParams, KvCacheStorageOptions } from './kv-format.js';
export { SelectionStatsCollector } from './selection-stats.js';
export type {
  SelectionStatsOptions,
  RecordSelectionParams,
  SelectionStatsTotals,
  SelectionStepSnapshot,
  SelectionStatsSnapshot,
} from './selection-stats.js';
