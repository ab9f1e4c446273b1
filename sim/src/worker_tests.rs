use std::collections::HashMap;

use meridian_engine::kv::BlockManager;
use meridian_engine::scheduler::{Scheduler, SchedulerConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

fn spec(max_running: u32, max_batch_tokens: u32, kv_blocks: u32) -> EngineSpec {
    toml::from_str(&format!(
        "base_us = 900\nprefill_token_us = 7\ndecode_token_us = 40\ncontext_token_us = 0.3\n\
         prefill_attention_us = 0.02\ntile_tokens = 4\ntile_us = 30\nmulti_tile_us = 200\n\
         step_overhead_us = 50\nstep_overhead_sequence_us = 3\nmax_running = {max_running}\n\
         max_batch_tokens = {max_batch_tokens}\nkv_blocks = {kv_blocks}\nblock_size = 16\n"
    ))
    .unwrap()
}

/// `(arrival_us, prompt, output)`, sorted by arrival.
fn jobs(seed: u64, n: usize, mean_gap_us: f64) -> Vec<(f64, u32, u32)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut t = 0.0;
    (0..n)
        .map(|_| {
            t += -(1.0 - rng.random::<f64>()).ln() * mean_gap_us;
            (t, rng.random_range(1..300), rng.random_range(1..120))
        })
        .collect()
}

/// The production scheduler, stepped with the same step-time model: the reference.
/// Returns each job's (first token, last token) times.
fn reference(spec: &EngineSpec, jobs: &[(f64, u32, u32)]) -> (Vec<(f64, f64)>, u64) {
    let mut sched = Scheduler::new(
        SchedulerConfig {
            max_batch_tokens: spec.max_batch_tokens as usize,
            max_running: spec.max_running as usize,
        },
        BlockManager::new(spec.kv_blocks as usize, spec.block_size as usize),
    );
    let model = spec.model();
    let mut times = vec![(-1.0, -1.0); jobs.len()];
    let mut generated: HashMap<u64, u32> = HashMap::new();
    let (mut t, mut next) = (0.0f64, 0usize);
    while times.iter().any(|x| x.1 < 0.0) {
        // Requests join between steps.
        while next < jobs.len() && jobs[next].0 <= t {
            // Distinct tokens per request: no prefix-cache hits.
            let prompt = (0..jobs[next].1).map(|i| next as u32 * 1000 + i).collect();
            sched.add(next as u64, prompt);
            next += 1;
        }
        if !sched.has_work() {
            t = jobs[next].0;
            continue;
        }
        let plan = sched.schedule();
        let mut shape = crate::engine_model::StepShape::default();
        for c in &plan.chunks {
            if c.len == 1 && c.logits && c.start >= sched.prompt_len(c.seq).unwrap_or(0) {
                shape.decode_tokens += 1.0;
            } else {
                shape.prefill_tokens += c.len as f64;
                shape.prefill_attention +=
                    meridian_engine::scheduler::attention_pairs(c.start, c.len) as f64;
            }
            shape.context_tokens += (c.start + c.len) as f64;
        }
        t += spec.overhead().at(plan.chunks.len() as f64) + model.step_us(&shape);
        sched.complete(&plan);
        for c in plan.chunks.iter().filter(|c| c.logits) {
            let g = generated.entry(c.seq).or_default();
            *g += 1;
            let i = c.seq as usize;
            if *g == 1 {
                times[i].0 = t;
            }
            if *g == jobs[i].2 {
                times[i].1 = t;
                sched.remove(c.seq);
            } else {
                sched.append(c.seq, 7);
            }
        }
    }
    (times, sched.preemptions())
}

/// The same jobs through [`Worker`].
fn simulated(spec: &EngineSpec, jobs: &[(f64, u32, u32)]) -> (Vec<(f64, f64)>, u64) {
    let mut w = Worker::new(spec);
    let mut times = vec![(-1.0, -1.0); jobs.len()];
    let mut wake: Option<f64> = None;
    let mut next = 0;
    let mut out = Vec::new();
    loop {
        let arrival = jobs.get(next).map(|j| j.0);
        // An arrival at a step boundary joins that boundary's plan.
        let arrival_first = match (arrival, wake) {
            (None, None) => break,
            (Some(a), Some(t)) => a <= t,
            (Some(_), None) => true,
            (None, Some(_)) => false,
        };
        if arrival_first {
            let (a, prompt, output) = jobs[next];
            let job = Job {
                req: next as ReqId,
                prompt,
                cached: 0,
                output,
            };
            if let Some(t) = w.enqueue(a, job) {
                wake = Some(t);
            }
            next += 1;
        } else if let Some(t) = wake {
            out.clear();
            wake = w.advance(t, &mut out);
            for o in &out {
                match *o {
                    Outcome::FirstToken(r, t) => times[r as usize].0 = t,
                    Outcome::Done(r, t) => times[r as usize].1 = t,
                }
            }
        }
    }
    (times, w.preemptions)
}

#[test]
fn matches_the_production_scheduler_step_for_step() {
    // Tight slots and a small token budget: queueing, chunked prefill, mixed steps.
    for (seed, max_running, budget, gap) in [
        (1, 4, 64, 20_000.0),
        (2, 16, 256, 5_000.0),
        (3, 64, 512, 2_000.0),
        (4, 2, 32, 50_000.0),
    ] {
        let spec = spec(max_running, budget, 100_000);
        let jobs = jobs(seed, 300, gap);
        let (want, want_pre) = reference(&spec, &jobs);
        let (got, got_pre) = simulated(&spec, &jobs);
        assert_eq!((want_pre, got_pre), (0, 0));
        for (i, (a, b)) in want.iter().zip(&got).enumerate() {
            assert!(
                (a.0 - b.0).abs() < 1e-3 * a.0.max(1.0) && (a.1 - b.1).abs() < 1e-3 * a.1.max(1.0),
                "seed {seed}, job {i} {:?}: reference {a:?}, simulated {b:?}",
                jobs[i]
            );
        }
    }
}

#[test]
fn out_of_kv_blocks_it_preempts_and_still_finishes_everything() {
    // 40 blocks of 16 tokens for up to 16 sequences of up to 420 tokens.
    let spec = spec(16, 256, 40);
    let jobs: Vec<_> = jobs(9, 200, 3_000.0);
    let (want, want_pre) = reference(&spec, &jobs);
    let (got, got_pre) = simulated(&spec, &jobs);
    assert!(want_pre > 0 && got_pre > 0, "{want_pre} {got_pre}");

    assert!(got.iter().all(|t| t.0 >= 0.0 && t.1 >= t.0));
    let mean = |v: &[(f64, f64)]| {
        v.iter().zip(&jobs).map(|(t, j)| t.1 - j.0).sum::<f64>() / v.len() as f64
    };
    let (a, b) = (mean(&want), mean(&got));
    eprintln!("preemptions {got_pre} vs {want_pre}; mean latency {b:.0} us vs {a:.0} us");
    assert!(
        (b / a - 1.0).abs() < 0.1,
        "mean latency {b:.0} us vs reference {a:.0} us"
    );
}

#[test]
fn a_run_of_decode_steps_is_timed_as_its_steps() {
    let seg = Segment {
        start_us: 100.0,
        first_step: 0,
        steps: 50,
        a: 1000.0,
        b: 3.0,
        mixed: false,
    };
    let mut t = 100.0;
    for k in 0..50u64 {
        assert_eq!(seg.done_by(t), k, "at {t}");
        assert_eq!(seg.done_by(t + 0.5), k);
        t += 1000.0 + 3.0 * k as f64;
        assert!((seg.start_us + seg.span(k + 1) - t).abs() < 1e-6);
    }
    assert_eq!(seg.done_by(t), 50);
    assert_eq!(seg.done_by(1e12), 50);
    assert_eq!(seg.done_by(0.0), 0);
}
