import { DataStorage, KernelBackend, engine, util } from '@tensorflow/tfjs-core';
import type { BackendTimingInfo, DataId, DataType, TensorInfo, backend_util } from '@tensorflow/tfjs-core';
import type { CudaAddon, DeviceBuffer } from './addon-types.js';

/** One tensor's storage: a device block (none for empty tensors) and tfjs's reference count. */
interface CudaTensorData {
  buffer: DeviceBuffer | null;
  dtype: DataType;
  size: number;
  refCount: number;
}

const ELEMENT_BYTES: Partial<Record<DataType, number>> = { float32: 4, int32: 4, bool: 1 };

function elementBytes(dtype: DataType): number {
  const b = ELEMENT_BYTES[dtype];
  if (b === undefined) throw new Error(`the cuda backend does not store ${dtype} tensors (float32, int32, bool only)`);
  return b;
}

/**
 * Reuses freed device blocks by size class. `cudaFree` waits for the whole device, which
 * would stall every tensor dispose; all work runs on the addon's one stream, so a block
 * handed out again is written only after the kernels queued before its release have read it.
 */
class BlockPool {
  private readonly free = new Map<number, DeviceBuffer[]>();
  private cached = 0;
  /** Blocks above this are returned to CUDA on release rather than cached. */
  private static readonly LARGEST_CACHED = 256 * 2 ** 20;
  constructor(private readonly addon: CudaAddon) {}

  /** Powers of two from 256 bytes up to 1 MiB, then whole MiBs: little slack on large weights. */
  static sizeClass(bytes: number): number {
    const MIB = 2 ** 20;
    if (bytes > MIB) return Math.ceil(bytes / MIB) * MIB;
    return bytes <= 256 ? 256 : 2 ** Math.ceil(Math.log2(bytes));
  }

  acquire(bytes: number): DeviceBuffer {
    const cls = BlockPool.sizeClass(bytes);
    const hit = this.free.get(cls)?.pop();
    if (hit !== undefined) {
      this.cached -= cls;
      return hit;
    }
    try {
      return this.addon.alloc(cls);
    } catch (err) {
      // Out of memory with blocks parked here: give them back and retry once.
      if (this.cached === 0) throw err;
      this.trim();
      return this.addon.alloc(cls);
    }
  }

  release(buffer: DeviceBuffer, bytes: number): void {
    const cls = BlockPool.sizeClass(bytes);
    if (cls > BlockPool.LARGEST_CACHED) {
      this.addon.free(buffer);
      return;
    }
    let list = this.free.get(cls);
    if (list === undefined) this.free.set(cls, (list = []));
    list.push(buffer);
    this.cached += cls;
  }

  /** Returns every cached block to CUDA. */
  trim(): void {
    for (const list of this.free.values()) for (const b of list) this.addon.free(b);
    this.free.clear();
    this.cached = 0;
  }
}

/**
 * A tfjs backend whose tensors live in GPU memory, over the CUDA addon. Kernels are registered
 * separately (`registerCudaKernels`); reading a tensor (`dataSync`, `data`) copies it to the host.
 */
export class CudaBackend extends KernelBackend {
  readonly data: DataStorage<CudaTensorData>;
  private bytesInUse = 0;
  private readonly pool: BlockPool;

  constructor(readonly addon: CudaAddon) {
    super();
    this.data = new DataStorage(this, engine());
    this.pool = new BlockPool(addon);
  }

  override write(values: backend_util.BackendValues, shape: number[], dtype: DataType): DataId {
    const dataId = {};
    this.data.set(dataId, this.store(values, dtype, util.sizeFromShape(shape), 1));
    return dataId;
  }

  override move(dataId: DataId, values: backend_util.BackendValues, shape: number[], dtype: DataType, refCount: number): void {
    this.data.set(dataId, this.store(values, dtype, util.sizeFromShape(shape), refCount));
  }

  /** A new tensor of this backend, uninitialised unless `values` are given. */
  makeTensorInfo(shape: number[], dtype: DataType, values?: backend_util.BackendValues): TensorInfo {
    const size = util.sizeFromShape(shape);
    const dataId = {};
    this.data.set(dataId, values === undefined ? this.allocate(dtype, size, 1) : this.store(values, dtype, size, 1));
    return { dataId, shape, dtype };
  }

  /** The device block of a tensor of this backend (null for an empty tensor). */
  bufferOf(info: TensorInfo): DeviceBuffer | null {
    const d = this.data.get(info.dataId);
    if (d === undefined) throw new Error('the tensor has no data on the cuda backend (disposed?)');
    return d.buffer;
  }

  override refCount(dataId: DataId): number {
    return this.data.has(dataId) ? this.data.get(dataId).refCount : 0;
  }

  override incRef(dataId: DataId): void {
    this.data.get(dataId).refCount++;
  }

  override numDataIds(): number {
    return this.data.numDataIds();
  }

  override async read(dataId: DataId): Promise<backend_util.BackendValues> {
    return this.readSync(dataId);
  }

  override readSync(dataId: DataId): backend_util.BackendValues {
    const d = this.data.get(dataId);
    const out = d.dtype === 'float32' ? new Float32Array(d.size) : d.dtype === 'int32' ? new Int32Array(d.size) : new Uint8Array(d.size);
    if (d.buffer !== null) this.addon.download(d.buffer, 0, out);
    return out;
  }

  override disposeData(dataId: DataId, force = false): boolean {
    if (!this.data.has(dataId)) return true;
    const d = this.data.get(dataId);
    d.refCount--;
    if (!force && d.refCount > 0) return false;
    this.release(d);
    this.data.delete(dataId);
    return true;
  }

  override memory(): { unreliable: boolean; numBytesInGPU: number } {
    return { unreliable: false, numBytesInGPU: this.bytesInUse };
  }

  override async time(f: () => void): Promise<BackendTimingInfo> {
    const start = util.now();
    f();
    this.addon.synchronize();
    return { kernelMs: util.now() - start };
  }

  override floatPrecision(): 32 {
    return 32;
  }

  override epsilon(): number {
    return 1e-7;
  }

  override dispose(): void {
    // tfjs calls this when the backend is removed; tensors still registered are freed.
    for (const d of [...this.liveData]) this.release(d);
    this.pool.trim();
  }

  /** Every live tensor's data, for dispose (DataStorage does not expose its entries). */
  private readonly liveData = new Set<CudaTensorData>();

  private allocate(dtype: DataType, size: number, refCount: number): CudaTensorData {
    const bytes = size * elementBytes(dtype);
    const d: CudaTensorData = { buffer: bytes > 0 ? this.pool.acquire(bytes) : null, dtype, size, refCount };
    this.bytesInUse += bytes;
    this.liveData.add(d);
    return d;
  }

  private store(values: backend_util.BackendValues, dtype: DataType, size: number, refCount: number): CudaTensorData {
    const d = this.allocate(dtype, size, refCount);
    if (values != null && d.buffer !== null) {
      if (!ArrayBuffer.isView(values)) {
        this.release(d);
        throw new Error(`the cuda backend cannot store ${dtype} values of this kind (strings are not supported)`);
      }
      const v = values as ArrayLike<number> & ArrayBufferView;
      const exact =
        (dtype === 'float32' && v instanceof Float32Array) || (dtype === 'int32' && v instanceof Int32Array) || (dtype === 'bool' && v instanceof Uint8Array);
      const typed = exact ? v : dtype === 'float32' ? Float32Array.from(v) : dtype === 'int32' ? Int32Array.from(v) : Uint8Array.from(v);
      this.addon.upload(d.buffer, 0, typed);
    }
    return d;
  }

  private release(d: CudaTensorData): void {
    if (d.buffer !== null) {
      this.pool.release(d.buffer, d.size * elementBytes(d.dtype));
      d.buffer = null;
      this.bytesInUse -= d.size * elementBytes(d.dtype);
    }
    this.liveData.delete(d);
  }
}
