/** Types of build.mjs, for the TypeScript tests that drive it. */
export declare const SOURCE_DIR: string;
export declare const OUT_DIR: string;
export declare const ADDON_PATH: string;
export declare function findNvcc(env?: NodeJS.ProcessEnv): string | null;
export interface BuildCudaAddonOptions {
  force?: boolean;
  verbose?: boolean;
  jobs?: number;
  nvcc?: string;
}
export interface BuildCudaAddonResult {
  path: string;
  cached: boolean;
  seconds: number;
  hash: string;
}
export declare function buildCudaAddon(options?: BuildCudaAddonOptions): Promise<BuildCudaAddonResult>;
