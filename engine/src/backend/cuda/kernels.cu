// Meridian's CUDA kernels: every operator of a Llama-family step except the matrix
// products (cuBLAS). Compiled at run time by NVRTC for the GPU found, with the model's
// shape fixed by the defines the host prepends (see kernels.rs), so loops over a head
// unroll and per-lane arrays stay in registers:
//   HEAD_DIM (a multiple of 32), GROUP (query heads per KV head), N_HEADS, N_KV,
//   BLOCK_SIZE (tokens per KV block), ROPE_INTERLEAVED (0 or 1).
// Layouts: activations are row-major, one row per token. The KV cache of a layer is
// [block][kv_head][slot][HEAD_DIM] half values, as in the CPU backend.

// Half values are stored as their bits and converted with the PTX instructions, so the
// source needs no header (NVRTC packages do not all ship cuda_fp16.h).
typedef unsigned short half_t;

__device__ __forceinline__ float h2f(half_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// Round to nearest even, as the CPU backend's conversion.
__device__ __forceinline__ half_t f2h(float f) {
    half_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

#define NEG_INF __int_as_float(0xff800000)
#define Q_DIM (N_HEADS * HEAD_DIM)
#define KV_DIM (N_KV * HEAD_DIM)
#define HALF_DIM (HEAD_DIM / 2)
#define ATT_WARPS 8
#define DPL (HEAD_DIM / 32)

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

struct Add {
    template <class T>
    __device__ T operator()(T a, T b) const { return a + b; }
};

struct Max {
    template <class T>
    __device__ T operator()(T a, T b) const { return a > b ? a : b; }
};

// Reduces `v` over the block with `op` (blockDim.x a multiple of 32, at most 1024);
// every thread gets the result. `identity` stands in for the lanes past the last warp.
template <class T, class Op>
__device__ T block_reduce(T v, Op op, T identity) {
    __shared__ T part[32];
    __shared__ T total;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        T t = lane < (int)(blockDim.x >> 5) ? part[lane] : identity;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) t = op(t, __shfl_xor_sync(0xffffffffu, t, o));
        if (lane == 0) total = t;
    }
    __syncthreads();
    return total;
}

__device__ float block_sum(float v) { return block_reduce(v, Add(), 0.0f); }
__device__ double block_sum_d(double v) { return block_reduce(v, Add(), 0.0); }
__device__ unsigned block_sum_u(unsigned v) { return block_reduce(v, Add(), 0u); }
__device__ unsigned block_max_u(unsigned v) { return block_reduce(v, Max(), 0u); }

// The larger of two (value, index) pairs over a warp, the lower index on ties; every
// lane gets it.
__device__ __forceinline__ void warp_argmax(float* v, int* i) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, *v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, *i, o);
        if (ov > *v || (ov == *v && oi < *i)) {
            *v = ov;
            *i = oi;
        }
    }
}

// The largest value of a row (NaN skipped) and its lowest index, over the block; every
// thread gets both. A row of nothing but -inf or NaN gives -inf.
__device__ void row_argmax(const float* __restrict__ r, int n, float* best, int* arg) {
    __shared__ float sv[32];
    __shared__ int si[32];
    __shared__ float best_v;
    __shared__ int best_i;
    float bv = NEG_INF;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = r[i];
        if (v > bv) {
            bv = v;
            bi = i;
        }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    warp_argmax(&bv, &bi);
    if (lane == 0) {
        sv[warp] = bv;
        si[warp] = bi;
    }
    __syncthreads();
    if (warp == 0) {
        bv = lane < (int)(blockDim.x >> 5) ? sv[lane] : NEG_INF;
        bi = lane < (int)(blockDim.x >> 5) ? si[lane] : 0x7fffffff;
        warp_argmax(&bv, &bi);
        if (lane == 0) {
            best_v = bv;
            best_i = bi;
        }
    }
    __syncthreads();
    *best = best_v;
    *arg = best_i;
}

// x[t] = table[tokens[t]], half to float. Grid: tokens; block: any.
extern "C" __global__ void embed(const half_t* __restrict__ table,
                                 const unsigned* __restrict__ tokens,
                                 float* __restrict__ x, int d) {
    const int t = blockIdx.x;
    const half_t* row = table + (size_t)tokens[t] * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) x[(size_t)t * d + i] = h2f(row[i]);
}

// out[i] = x[rows[i]] * rsqrt(mean(x^2) + eps) * w, as half; rows == null: row i.
// Grid: output rows; block: 256.
extern "C" __global__ void rms_norm(const float* __restrict__ x, const float* __restrict__ w,
                                    half_t* __restrict__ out, const int* __restrict__ rows,
                                    float eps, int d) {
    const int r = rows ? rows[blockIdx.x] : blockIdx.x;
    const float* xr = x + (size_t)r * d;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss);
    const float scale = 1.0f / sqrtf(ss / (float)d + eps);
    half_t* o = out + (size_t)blockIdx.x * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) o[i] = f2h(xr[i] * scale * w[i]);
}

// One token's Q|K|V row (float, qkv_w wide): add the biases (if any), rotate Q and K by
// the token's position (angles in double, as the CPU backend computes them), and store
// K and V as half into the token's cache slot (slot = block * BLOCK_SIZE + offset).
// Q stays in place for the attention. Grid: tokens; block: 128.
extern "C" __global__ void rope_store(float* __restrict__ qkv, int qkv_w,
                                      const float* __restrict__ bias,
                                      const int* __restrict__ pos, const int* __restrict__ slot,
                                      const double* __restrict__ inv_freq,
                                      half_t* __restrict__ kc, half_t* __restrict__ vc) {
    const int t = blockIdx.x;
    float* row = qkv + (size_t)t * qkv_w;
    if (bias) {
        for (int i = threadIdx.x; i < Q_DIM + 2 * KV_DIM; i += blockDim.x) row[i] += bias[i];
        __syncthreads();
    }
    const double p = (double)pos[t];
    for (int idx = threadIdx.x; idx < (N_HEADS + N_KV) * HALF_DIM; idx += blockDim.x) {
        const int head = idx / HALF_DIM, i = idx % HALF_DIM;
        double s, c;
        sincos(p * inv_freq[i], &s, &c);
        const float sf = (float)s, cf = (float)c;
#if ROPE_INTERLEAVED
        const int a = head * HEAD_DIM + 2 * i, b = a + 1;
#else
        const int a = head * HEAD_DIM + i, b = a + HALF_DIM;
#endif
        const float x0 = row[a], x1 = row[b];
        row[a] = x0 * cf - x1 * sf;
        row[b] = x0 * sf + x1 * cf;
    }
    __syncthreads();
    const int sl = slot[t];
    const size_t blk = (size_t)(sl / BLOCK_SIZE), off = (size_t)(sl % BLOCK_SIZE);
    for (int idx = threadIdx.x; idx < KV_DIM; idx += blockDim.x) {
        const int h = idx / HEAD_DIM, dd = idx % HEAD_DIM;
        const size_t dst = ((blk * N_KV + h) * BLOCK_SIZE + off) * HEAD_DIM + dd;
        kc[dst] = f2h(row[Q_DIM + idx]);
        vc[dst] = f2h(row[Q_DIM + KV_DIM + idx]);
    }
}

// Causal attention of one token's GROUP query heads that share KV head blockIdx.y:
// softmax(q.k / sqrt(HEAD_DIM)) . v over positions 0..=pos[t] of its sequence, read
// through the sequence's block table (row seq_of[t] of block_tables, *stride wide: the
// stride lives in device memory so that a captured graph serves any context length).
// Each warp streams every ATT_WARPS-th key with a running max (online softmax), its
// lanes splitting the head; the warps' partial sums merge at the end. The same kernel
// serves prefill chunks (many tokens of one sequence) and decode batches.
// Grid: (tokens, N_KV, splits); block: ATT_WARPS * 32. With one split the block writes
// the output; with more (small decode batches, where tokens x KV heads would leave most
// of the GPU idle), block z takes the z-th slice of the keys and writes its unnormalized
// sums, maximum and denominator to `partial` for attention_combine (flash-decoding).
#define PART_W (HEAD_DIM + 2)
extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32)
attention(const float* __restrict__ qkv, int qkv_w, const half_t* __restrict__ kc,
          const half_t* __restrict__ vc, const int* __restrict__ block_tables,
          const int* __restrict__ stride,
          const int* __restrict__ seq_of, const int* __restrict__ pos,
          half_t* __restrict__ out, float* __restrict__ partial, float scale) {
    __shared__ float sm_acc[ATT_WARPS][GROUP][HEAD_DIM];
    __shared__ float sm_m[ATT_WARPS][GROUP];
    __shared__ float sm_l[ATT_WARPS][GROUP];
    const int t = blockIdx.x, h = blockIdx.y, z = blockIdx.z, splits = gridDim.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int len = pos[t] + 1;
    const int chunk = (len + splits - 1) / splits;
    const int j0 = z * chunk, j1 = min(len, j0 + chunk);
    const int* table = block_tables + (size_t)seq_of[t] * (size_t)*stride;
    const float* qrow = qkv + (size_t)t * qkv_w + (size_t)h * GROUP * HEAD_DIM;

    float q[GROUP][DPL], acc[GROUP][DPL], m[GROUP], l[GROUP];
#pragma unroll
    for (int g = 0; g < GROUP; g++) {
        m[g] = NEG_INF;
        l[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            q[g][i] = qrow[g * HEAD_DIM + lane * DPL + i] * scale;
            acc[g][i] = 0.0f;
        }
    }
#pragma unroll 2
    for (int j = j0 + warp; j < j1; j += ATT_WARPS) {
        const size_t blk = (size_t)table[j / BLOCK_SIZE];
        const size_t off = ((blk * N_KV + h) * BLOCK_SIZE + (j % BLOCK_SIZE)) * HEAD_DIM + lane * DPL;
        float k[DPL], v[DPL];
#pragma unroll
        for (int i = 0; i < DPL; i++) {
            k[i] = h2f(kc[off + i]);
            v[i] = h2f(vc[off + i]);
        }
#pragma unroll
        for (int g = 0; g < GROUP; g++) {
            float s = 0.0f;
#pragma unroll
            for (int i = 0; i < DPL; i++) s += q[g][i] * k[i];
            s = warp_sum(s);
            const float m_new = fmaxf(m[g], s);
            const float c = __expf(m[g] - m_new), e = __expf(s - m_new);
            l[g] = l[g] * c + e;
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[g][i] = acc[g][i] * c + e * v[i];
            m[g] = m_new;
        }
    }
#pragma unroll
    for (int g = 0; g < GROUP; g++) {
#pragma unroll
        for (int i = 0; i < DPL; i++) sm_acc[warp][g][lane * DPL + i] = acc[g][i];
        if (lane == 0) {
            sm_m[warp][g] = m[g];
            sm_l[warp][g] = l[g];
        }
    }
    __syncthreads();
    half_t* o = out + (size_t)t * Q_DIM + (size_t)h * GROUP * HEAD_DIM;
    float* part = partial + (((size_t)t * N_KV + h) * splits + z) * GROUP * PART_W;
    for (int idx = threadIdx.x; idx < GROUP * HEAD_DIM; idx += blockDim.x) {
        const int g = idx / HEAD_DIM, dd = idx % HEAD_DIM;
        float mx = NEG_INF;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) mx = fmaxf(mx, sm_m[w][g]);
        float num = 0.0f, den = 0.0f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) {
            if (sm_m[w][g] == NEG_INF) continue;
            const float f = __expf(sm_m[w][g] - mx);
            num += f * sm_acc[w][g][dd];
            den += f * sm_l[w][g];
        }
        if (splits == 1) {
            o[idx] = f2h(den > 0.0f ? num / den : 0.0f);
        } else {
            part[g * PART_W + dd] = num;
            if (dd == 0) {
                part[g * PART_W + HEAD_DIM] = mx;
                part[g * PART_W + HEAD_DIM + 1] = den;
            }
        }
    }
}

// Merges the key slices of a split attention: out = sum_z e^(m_z - M) num_z / sum_z
// e^(m_z - M) den_z. Grid: (tokens, N_KV); block: 128.
extern "C" __global__ void attention_combine(const float* __restrict__ partial, int splits,
                                             half_t* __restrict__ out) {
    const int t = blockIdx.x, h = blockIdx.y;
    const float* part = partial + ((size_t)t * N_KV + h) * splits * GROUP * PART_W;
    half_t* o = out + (size_t)t * Q_DIM + (size_t)h * GROUP * HEAD_DIM;
    for (int idx = threadIdx.x; idx < GROUP * HEAD_DIM; idx += blockDim.x) {
        const int g = idx / HEAD_DIM, dd = idx % HEAD_DIM;
        float mx = NEG_INF;
        for (int z = 0; z < splits; z++) mx = fmaxf(mx, part[(z * GROUP + g) * PART_W + HEAD_DIM]);
        float num = 0.0f, den = 0.0f;
        for (int z = 0; z < splits; z++) {
            const float* p = part + (z * GROUP + g) * PART_W;
            if (p[HEAD_DIM] == NEG_INF) continue;
            const float f = __expf(p[HEAD_DIM] - mx);
            num += f * p[dd];
            den += f * p[HEAD_DIM + 1];
        }
        o[idx] = f2h(den > 0.0f ? num / den : 0.0f);
    }
}

// out[t][i] = silu(gu[t][i]) * gu[t][d_ff + i], as half: the SwiGLU gate.
// Grid: tokens; block: 256.
extern "C" __global__ void silu_mul(const float* __restrict__ gu, half_t* __restrict__ out,
                                    int d_ff) {
    const float* r = gu + (size_t)blockIdx.x * 2 * d_ff;
    half_t* o = out + (size_t)blockIdx.x * d_ff;
    for (int i = threadIdx.x; i < d_ff; i += blockDim.x) {
        const float g = r[i];
        o[i] = f2h(g / (1.0f + __expf(-g)) * r[d_ff + i]);
    }
}

// Greedy pick per logits row: the first index of the largest value (NaN counts as
// -inf) and its log-probability under the row's softmax. A row of nothing but -inf or
// NaN gives token 0 and -inf, as the CPU sampler does. Grid: rows; block: 1024.
extern "C" __global__ void __launch_bounds__(1024)
argmax_logprob(const float* __restrict__ logits, int vocab,
                                          int* __restrict__ token, float* __restrict__ logprob) {
    const float* r = logits + (size_t)blockIdx.x * vocab;
    float mx;
    int best_i;
    row_argmax(r, vocab, &mx, &best_i);
    if (mx == NEG_INF) {
        if (threadIdx.x == 0) {
            token[blockIdx.x] = 0;
            logprob[blockIdx.x] = NEG_INF;
        }
        return;
    }
    // With a +inf maximum, the +inf logits share all the probability (the CPU's rule).
    const bool inf = mx == __int_as_float(0x7f800000);
    float s = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = r[i];
        if (inf)
            s += v == mx ? 1.0f : 0.0f;
        else if (v == v)
            s += expf(v - mx);
    }
    s = block_sum(s);
    if (threadIdx.x == 0) {
        token[blockIdx.x] = best_i;
        logprob[blockIdx.x] = -logf(s);
    }
}

// Generated weights for a synthetic model: uniform in [-scale, scale) from a counter
// hash of (seed, index), so the same seed gives the same model on any GPU.
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

extern "C" __global__ void fill_uniform_half(half_t* __restrict__ p, unsigned long long n,
                                             unsigned long long seed, float scale) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned long long z = mix64(seed * 0x9e3779b97f4a7c15ull + i);
        const float u = (float)(z >> 40) * (1.0f / 16777216.0f);
        p[i] = f2h((2.0f * u - 1.0f) * scale);
    }
}

extern "C" __global__ void fill_float(float* __restrict__ p, unsigned long long n, float value) {
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x)
        p[i] = value;
}

// ---- Sampling on the device: temperature, top-k, top-p, min-p, one seeded uniform ----

// Order-preserving map of a float to an unsigned key (larger float, larger key).
__device__ __forceinline__ unsigned fkey(float f) {
    // -0 ranks with +0, as the CPU sampler's comparison has it.
    const unsigned b = __float_as_uint(f == 0.0f ? 0.0f : f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float unkey(unsigned k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Whether a candidate's logit `l` is kept under the cut: above the cut key, or one of
// the first `cut_ties` ties at it in id order (`seen` counts the ties passed so far).
__device__ __forceinline__ bool kept(float l, bool any_cut, unsigned cut_key, unsigned cut_ties,
                                     unsigned* seen) {
    if (!any_cut) return true;
    const unsigned k = fkey(l);
    if (k != cut_key) return k > cut_key;
    return (*seen)++ < cut_ties;
}

// Exclusive prefix sum over the block's threads, in thread order.
__device__ double block_scan_d(double v) {
    __shared__ double part[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    double x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const double y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    __syncthreads();
    if (lane == 31) part[warp] = x;
    __syncthreads();
    if (warp == 0) {
        double s = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const double y = __shfl_up_sync(0xffffffffu, s, o);
            if (lane >= o) s += y;
        }
        part[lane] = s;
    }
    __syncthreads();
    return (warp > 0 ? part[warp - 1] : 0.0) + x - v;
}

// The sampling weight of a logit: exp((l - max) * inv_t), zero below e^-80 and for NaN
// or -inf; with a +inf maximum only the +inf logits, equally (the CPU sampler's rules).
__device__ __forceinline__ float sample_weight(float l, float mx, float inv_t) {
    if (mx == __int_as_float(0x7f800000)) return l == mx ? 1.0f : 0.0f;
    const float x = (l - mx) * inv_t;
    return (l == l && x >= -80.0f) ? expf(x) : 0.0f;
}

// One token per logits row. params: 4 floats per row (1/temperature, top_k, top_p,
// min_p; 1/temperature 0 is greedy); uniforms: one per row in [0, 1), drawn on the host
// from the sequence's seeded stream. Keeps the CPU sampler's set: the candidates (weight
// > 0) ranked by logit then id, cut at the k-th (top-k), at the first whose cumulative
// weight reaches top_p of what top-k keeps (top-p), and after the last whose weight is
// at least min_p (min-p), whichever cut comes first; then draws from the kept weights,
// adding them in id order until the sum passes uniform * total. Also returns the
// token's log-probability under the raw logits. Grid: rows; block: 1024.
extern "C" __global__ void __launch_bounds__(1024)
sample(const float* __restrict__ logits, int vocab,
                                  const float* __restrict__ params,
                                  const double* __restrict__ uniforms, int* __restrict__ token,
                                  float* __restrict__ logprob) {
    const int row = blockIdx.x;
    const float* r = logits + (size_t)row * vocab;
    const float inv_t = params[4 * row], top_p = params[4 * row + 2], min_p = params[4 * row + 3];
    const unsigned top_k = (unsigned)params[4 * row + 1];
    const double u = uniforms[row];
    const int tid = threadIdx.x, nt = blockDim.x;

    float mx;
    int arg;
    row_argmax(r, vocab, &mx, &arg);
    if (mx == NEG_INF) {
        if (tid == 0) {
            token[row] = 0;
            logprob[row] = NEG_INF;
        }
        return;
    }
    // The raw distribution's normalizer, for the log-probability.
    double zr = 0.0;
    for (int i = tid; i < vocab; i += nt) zr += (double)sample_weight(r[i], mx, 1.0f);
    zr = block_sum_d(zr);

    int chosen = arg;
    if (inv_t > 0.0f) {
        // Candidates and their total weight.
        bool any_cut = false;
        unsigned cut_key = 0, cut_ties = 0;  // keep key > cut_key, and cut_ties ties at it
        double z = 0.0;
        unsigned cands = 0;
        for (int i = tid; i < vocab; i += nt) {
            const float w = sample_weight(r[i], mx, inv_t);
            z += (double)w;
            cands += w > 0.0f;
        }
        z = block_sum_d(z);
        cands = block_sum_u(cands);
        double kept_z = z;
        // top-k: the largest key with at least k candidates at or above it.
        if (top_k > 0 && top_k < cands) {
            unsigned t = 0;
            for (int bit = 31; bit >= 0; bit--) {
                const unsigned trial = t | (1u << bit);
                unsigned c = 0;
                for (int i = tid; i < vocab; i += nt)
                    c += (sample_weight(r[i], mx, inv_t) > 0.0f && fkey(r[i]) >= trial);
                const bool ok = block_sum_u(c) >= top_k;
                if (ok) t = trial;
            }
            unsigned above = 0;
            for (int i = tid; i < vocab; i += nt)
                above += (sample_weight(r[i], mx, inv_t) > 0.0f && fkey(r[i]) > t);
            above = block_sum_u(above);
            any_cut = true;
            cut_key = t;
            cut_ties = top_k - above;
            double wa = 0.0;
            for (int i = tid; i < vocab; i += nt) {
                const float w = sample_weight(r[i], mx, inv_t);
                if (w > 0.0f && fkey(r[i]) > t) wa += (double)w;
            }
            wa = block_sum_d(wa);
            kept_z = wa + (double)cut_ties * (double)sample_weight(unkey(t), mx, inv_t);
        }
        // top-p: the first token, in rank order, where the cumulative weight reaches
        // top_p of what top-k kept.
        if (top_p > 0.0f && top_p < 1.0f) {
            const double target = (double)top_p * kept_z;
            unsigned t = 0;
            bool found = false;
            for (int bit = 31; bit >= 0; bit--) {
                const unsigned trial = t | (1u << bit);
                double wsum = 0.0;
                for (int i = tid; i < vocab; i += nt) {
                    const float w = sample_weight(r[i], mx, inv_t);
                    if (w > 0.0f && fkey(r[i]) >= trial) wsum += (double)w;
                }
                wsum = block_sum_d(wsum);
                if (wsum >= target) {
                    t = trial;
                    found = true;
                }
            }
            if (found) {
                double wa = 0.0;
                for (int i = tid; i < vocab; i += nt) {
                    const float w = sample_weight(r[i], mx, inv_t);
                    if (w > 0.0f && fkey(r[i]) > t) wa += (double)w;
                }
                wa = block_sum_d(wa);
                const double wt = (double)sample_weight(unkey(t), mx, inv_t);
                unsigned need = wt > 0.0 ? (unsigned)ceil((target - wa) / wt) : 1u;
                if (need < 1u) need = 1u;
                if (!any_cut || t > cut_key || (t == cut_key && need < cut_ties)) {
                    any_cut = true;
                    cut_key = t;
                    cut_ties = need;
                }
            }
        }
        // min-p: keep every candidate whose weight is at least min_p (of the maximum's 1).
        if (min_p > 0.0f) {
            const float m = fminf(min_p, 1.0f);
            unsigned low = 0xffffffffu;
            for (int i = tid; i < vocab; i += nt)
                if (sample_weight(r[i], mx, inv_t) >= m) low = min(low, fkey(r[i]));
            low = ~block_max_u(~low);
            if (!any_cut || low > cut_key) {
                any_cut = true;
                cut_key = low;
                cut_ties = 0xffffffffu;  // every tie
            }
        }
        // The kept weight, then the draw: add kept weights in id order past u * total.
        const int chunk = (vocab + nt - 1) / nt;
        const int lo = min(vocab, tid * chunk), hi = min(vocab, lo + chunk);
        unsigned ties = 0;
        if (any_cut)
            for (int i = lo; i < hi; i++)
                ties += (sample_weight(r[i], mx, inv_t) > 0.0f && fkey(r[i]) == cut_key);
        // Exclusive scan of the tie counts, as doubles (exact for any vocabulary).
        const unsigned tie_base = (unsigned)block_scan_d((double)ties);
        double local = 0.0;
        int last_kept = -1;
        {
            unsigned seen = tie_base;
            for (int i = lo; i < hi; i++) {
                const float w = sample_weight(r[i], mx, inv_t);
                if (!(w > 0.0f) || !kept(r[i], any_cut, cut_key, cut_ties, &seen)) continue;
                local += (double)w;
                last_kept = i;
            }
        }
        const double before = block_scan_d(local);
        const double total = block_sum_d(local);
        const double target = u * total;
        __shared__ int s_pick;
        if (tid == 0) s_pick = -1;
        __syncthreads();
        if (local > 0.0 && before <= target && before + local > target) {
            double cum = before;
            unsigned seen = tie_base;
            for (int i = lo; i < hi; i++) {
                const float w = sample_weight(r[i], mx, inv_t);
                if (!(w > 0.0f) || !kept(r[i], any_cut, cut_key, cut_ties, &seen)) continue;
                cum += (double)w;
                if (cum > target) {
                    atomicMax(&s_pick, i);  // one thread only holds the crossing
                    break;
                }
            }
        }
        // Rounding left the sum short: the last kept token.
        const unsigned last = block_max_u((unsigned)(last_kept + 1));
        __syncthreads();
        chosen = s_pick >= 0 ? s_pick : (int)last - 1;
        if (chosen < 0) chosen = arg;
    }
    if (tid == 0) {
        token[row] = chosen;
        const float l = r[chosen];
        float lp;
        if (mx == __int_as_float(0x7f800000))
            lp = l == mx ? (float)(-log(zr)) : NEG_INF;
        else if (!(l == l) || l == NEG_INF)
            lp = NEG_INF;
        else
            lp = (float)(((double)l - (double)mx) - log(zr));
        logprob[row] = lp;
    }
}
