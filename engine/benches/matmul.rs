//! Quantized matmul on SmolLM2-135M's shapes with random weights: criterion
//! timings for the detected kernel, a table of GFLOP/s (2·m·k·n per
//! product) for every kernel this CPU runs, and the effective weight
//! bandwidth of batch-1 products, then products streamed from memory by token count.
//!
//! `cargo bench -p meridian-engine --bench matmul`; `MATMUL_TABLE=0` skips the
//! tables, `MATMUL_TABLE=streamed` prints only the streamed products by token
//! count. Run it on an idle machine: it uses a 2-thread pool.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use half::f16;
use meridian_engine::backend::cpu::matmul::{Kernel, QMatrix, QuantizedActs, matmul};
use meridian_engine::gguf::GgmlType;

/// (name, type, m rows, k cols): the attention/FFN matrices are Q4_1, the
/// tied embedding / output head Q8_0.
const SHAPES: [(&str, GgmlType, usize, usize); 4] = [
    ("attn_q 576x576", GgmlType::Q4_1, 576, 576),
    ("ffn_up 1536x576", GgmlType::Q4_1, 1536, 576),
    ("ffn_down 576x1536", GgmlType::Q4_1, 576, 1536),
    ("output 49152x576", GgmlType::Q8_0, 49152, 576),
];
const TOKENS: [usize; 4] = [1, 16, 64, 512];
const THREADS: usize = 2;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Random quants with f16 scales in a realistic range.
fn random_matrix(rng: &mut Rng, ty: GgmlType, m: usize, k: usize) -> QMatrix {
    let bs = ty.type_size();
    let mut data: Vec<u8> = (0..m * ty.row_bytes(k).expect("row length"))
        .map(|_| rng.next() as u8)
        .collect();
    for b in data.chunks_exact_mut(bs) {
        b[..2].copy_from_slice(&f16::from_f32(0.002 + 0.02 * rng.unit().abs()).to_le_bytes());
        if ty == GgmlType::Q4_1 {
            b[2..4].copy_from_slice(&f16::from_f32(0.1 * rng.unit()).to_le_bytes());
        }
    }
    QMatrix::from_raw(ty, m, k, &data).expect("valid matrix")
}

fn random_acts(rng: &mut Rng, n: usize, k: usize) -> QuantizedActs {
    let x: Vec<f32> = (0..n * k).map(|_| rng.unit()).collect();
    let mut acts = QuantizedActs::new();
    acts.quantize(&x, n, k);
    acts
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

fn flops(m: usize, k: usize, n: usize) -> u64 {
    2 * (m * k * n) as u64
}

fn bench_matmul(c: &mut Criterion) {
    let pool = pool(THREADS);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut group = c.benchmark_group("matmul");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for (name, ty, m, k) in SHAPES {
        let w = random_matrix(&mut rng, ty, m, k);
        for n in TOKENS {
            let acts = random_acts(&mut rng, n, k);
            let mut out = vec![0f32; n * m];
            group.throughput(Throughput::Elements(flops(m, k, n)));
            group.bench_with_input(
                BenchmarkId::new(format!("{name} {}", w.kernel().name()), n),
                &n,
                |b, _| {
                    // The engine runs a whole step inside the pool.
                    pool.install(|| b.iter(|| matmul(black_box(&w), &acts, &mut out, &pool)));
                },
            );
        }
    }
    group.finish();
}

/// Best seconds per call over at least `min_time` (and 3 calls).
fn time_it(min_time: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let (mut best, mut calls) = (f64::INFINITY, 0);
    while calls < 3 || start.elapsed() < min_time {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        calls += 1;
    }
    best
}

fn table() {
    let pool = pool(THREADS);
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    println!("\nGFLOP/s (2·m·k·n / best time), {THREADS} threads:");
    print!("{:<20}{:<13}", "shape", "kernel");
    for n in TOKENS {
        print!("{:>10}", format!("n={n}"));
    }
    println!();
    for (name, ty, m, k) in SHAPES {
        let mut w = random_matrix(&mut rng, ty, m, k);
        let acts: Vec<QuantizedActs> = TOKENS
            .iter()
            .map(|&n| random_acts(&mut rng, n, k))
            .collect();
        for kernel in Kernel::available() {
            w.set_kernel(kernel).expect("available");
            print!("{name:<20}{:<13}", kernel.name());
            for (acts, n) in acts.iter().zip(TOKENS) {
                // The scalar kernel would take minutes on the largest products.
                if kernel == Kernel::Scalar && m * k * n > 1 << 26 {
                    print!("{:>10}", "-");
                    continue;
                }
                let mut out = vec![0f32; n * m];
                let s = pool.install(|| {
                    time_it(Duration::from_millis(300), || {
                        matmul(&w, acts, &mut out, &pool)
                    })
                });
                print!("{:>10.1}", flops(m, k, n) as f64 / s / 1e9);
            }
            println!();
        }
    }
}

/// Batch-1 products: weight bytes read per second, with one matrix (cache
/// resident when it fits) and rotating through copies that together exceed
/// the caches (about 256 MiB, as a decode step streams the whole model).
fn bandwidth() {
    let pool = pool(THREADS);
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    println!("\nBatch-1 effective weight bandwidth (GB/s), {THREADS} threads:");
    println!(
        "{:<28}{:<13}{:>8}{:>12}{:>12}",
        "matrix", "kernel", "MiB", "one copy", "streamed"
    );
    for (label, ty, m, k) in [
        ("Q8_0 output 49152x576", GgmlType::Q8_0, 49152, 576),
        ("Q4_1 ffn_up 1536x576", GgmlType::Q4_1, 1536, 576),
    ] {
        let proto = random_matrix(&mut rng, ty, m, k);
        let copies = (256 << 20) / proto.bytes() + 1;
        let mut ws: Vec<QMatrix> = (0..copies)
            .map(|_| random_matrix(&mut rng, ty, m, k))
            .collect();
        let acts = random_acts(&mut rng, 1, k);
        let mut out = vec![0f32; m];
        for kernel in Kernel::available().filter(|&k| k != Kernel::Scalar) {
            for w in &mut ws {
                w.set_kernel(kernel).expect("available");
            }
            let bytes = ws[0].bytes() as f64;
            let one = pool.install(|| {
                time_it(Duration::from_millis(300), || {
                    matmul(&ws[0], &acts, &mut out, &pool)
                })
            });
            let all = pool.install(|| {
                time_it(Duration::from_millis(500), || {
                    for w in &ws {
                        matmul(w, &acts, &mut out, &pool);
                    }
                })
            });
            println!(
                "{label:<28}{:<13}{:>8.1}{:>12.1}{:>12.1}",
                kernel.name(),
                bytes / (1 << 20) as f64,
                bytes / one / 1e9,
                bytes * copies as f64 / all / 1e9
            );
        }
    }
}

/// Products streamed from memory as a decode step streams the model (copies of the
/// FFN matrices, about 256 MiB), one thread, at token counts on both sides of the
/// detected kernel's register tile: what one more sequence costs a step's products.
fn streamed_by_tokens() {
    let pool = pool(1);
    let mut rng = Rng(0x6A09_E667_F3BC_C908);
    let (m, k) = (1536, 576);
    let proto = random_matrix(&mut rng, GgmlType::Q4_1, m, k);
    let copies = (256 << 20) / proto.bytes() + 1;
    let ws: Vec<QMatrix> = (0..copies)
        .map(|_| random_matrix(&mut rng, GgmlType::Q4_1, m, k))
        .collect();
    let kernel = Kernel::detect();
    println!(
        "\nStreamed Q4_1 {m}x{k} products, {copies} copies ({:.0} MiB), 1 thread, {} (token tile {}):",
        (proto.bytes() * copies) as f64 / (1 << 20) as f64,
        kernel.name(),
        kernel.token_tile()
    );
    println!(
        "{:>7}{:>12}{:>22}",
        "tokens", "ms a pass", "ms per added token"
    );
    let mut last: Option<(usize, f64)> = None;
    for n in [1, 4, 8, 9, 12, 13, 16, 17, 24, 25, 32, 33] {
        let acts = random_acts(&mut rng, n, k);
        let mut out = vec![0f32; n * m];
        let s = pool.install(|| {
            time_it(Duration::from_millis(1500), || {
                for w in &ws {
                    matmul(w, &acts, &mut out, &pool);
                }
            })
        });
        let step = last.map_or(String::new(), |(n0, s0)| {
            format!("{:>22.3}", (s - s0) * 1e3 / (n - n0) as f64)
        });
        println!("{n:>7}{:>12.2}{step}", s * 1e3);
        last = Some((n, s));
    }
}

/// Activation quantization, which the engine does once per input and shares
/// between the products that read it.
fn quantize_speed() {
    let mut rng = Rng(7);
    let (n, k) = (512, 576);
    let x: Vec<f32> = (0..n * k).map(|_| rng.unit()).collect();
    let pool = pool(THREADS);
    println!(
        "\nQuantizing {n}x{k} activations (`quantize`, one thread; `quantize_in`, {THREADS}):"
    );
    for kernel in Kernel::available() {
        let mut acts = QuantizedActs::with_kernel(kernel).expect("available");
        let one = time_it(Duration::from_millis(200), || {
            acts.quantize(black_box(&x), n, k)
        });
        let par = pool.install(|| {
            time_it(Duration::from_millis(200), || {
                acts.quantize_in(black_box(&x), n, k, &pool)
            })
        });
        println!(
            "{:<13}{:>8.1} us {:>8.1} us  ({:.2} / {:.2} Gvalues/s)",
            kernel.name(),
            one * 1e6,
            par * 1e6,
            (n * k) as f64 / one / 1e9,
            (n * k) as f64 / par / 1e9
        );
    }
}

fn main() {
    if std::env::var("MATMUL_TABLE").as_deref() == Ok("streamed") {
        return streamed_by_tokens();
    }
    let args: Vec<String> = std::env::args().collect();
    let mut c = Criterion::default().configure_from_args();
    bench_matmul(&mut c);
    c.final_summary();
    let quick = args.iter().any(|a| a == "--test" || a == "--list");
    if !quick && std::env::var("MATMUL_TABLE").as_deref() != Ok("0") {
        if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
            println!("\nload average at start of table: {}", load.trim());
        }
        println!("kernel chosen on this CPU: {}", Kernel::detect().name());
        table();
        bandwidth();
        streamed_by_tokens();
        quantize_speed();
    }
}
