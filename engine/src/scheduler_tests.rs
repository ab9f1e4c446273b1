use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

fn sched(
    blocks: usize,
    block_size: usize,
    max_batch_tokens: usize,
    max_running: usize,
) -> Scheduler {
    Scheduler::new(
        SchedulerConfig {
            max_batch_tokens,
            max_running,
        },
        BlockManager::new(blocks, block_size),
    )
}

/// A stand-in model: the next token is a function of every token before it, so a
/// scheduler that loses, reorders or duplicates tokens changes the output.
fn next_token(tokens: &[u32]) -> u32 {
    tokens
        .iter()
        .fold(7u32, |h, &t| h.wrapping_mul(31).wrapping_add(t))
        % 97
}

/// Drives `s` to completion: each sequence generates `n_gen` tokens. Checks on every step
/// that chunks are contiguous with what was computed before and that blocks cover them.
fn run(s: &mut Scheduler, prompts: &[Vec<u32>], n_gen: usize) -> HashMap<SeqId, Vec<u32>> {
    let mut computed: HashMap<SeqId, usize> = HashMap::new();
    for (i, p) in prompts.iter().enumerate() {
        s.add(i as SeqId, p.clone());
    }
    let mut out: HashMap<SeqId, Vec<u32>> = HashMap::new();
    let mut steps = 0;
    while s.has_work() {
        steps += 1;
        assert!(steps < 100_000, "no progress");
        let plan = s.schedule();
        for id in &plan.preempted {
            computed.insert(*id, 0);
        }
        assert!(!plan.is_empty(), "a step with work planned nothing");
        for c in &plan.chunks {
            let done = computed.entry(c.seq).or_insert(0);
            // Prefix-cache hits skip ahead; never backwards, never a gap after a start.
            assert!(
                c.start >= *done || *done == 0,
                "chunk {c:?} before computed {done}"
            );
            let table = s.block_table(c.seq);
            assert!(
                table.len() * s.blocks().block_size() >= c.start + c.len,
                "blocks do not cover {c:?}"
            );
            *done = c.start + c.len;
        }
        s.complete(&plan);
        for c in plan.chunks.iter().filter(|c| c.logits) {
            let tokens = s.tokens(c.seq).unwrap();
            let produced = tokens.len() - s.prompt_len(c.seq).unwrap();
            let t = next_token(tokens);
            s.append(c.seq, t);
            if produced + 1 == n_gen {
                out.insert(
                    c.seq,
                    s.tokens(c.seq).unwrap()[s.prompt_len(c.seq).unwrap()..].to_vec(),
                );
                s.remove(c.seq);
            }
        }
    }
    out
}

fn alone(prompt: &[u32], n_gen: usize) -> Vec<u32> {
    let mut tokens = prompt.to_vec();
    for _ in 0..n_gen {
        tokens.push(next_token(&tokens));
    }
    tokens[prompt.len()..].to_vec()
}

#[test]
fn decodes_go_first_then_prefill_chunks() {
    let mut s = sched(64, 4, 8, 8);
    s.add(1, vec![1; 3]);
    let p = s.schedule();
    assert_eq!(
        p.chunks,
        vec![Chunk {
            seq: 1,
            start: 0,
            len: 3,
            logits: true
        }]
    );
    s.complete(&p);
    s.append(1, 5);
    s.add(2, vec![2; 20]);
    let p = s.schedule();
    // The decode of 1, then 7 tokens of 2's prompt (budget 8).
    assert_eq!(
        p.chunks[0],
        Chunk {
            seq: 1,
            start: 3,
            len: 1,
            logits: true
        }
    );
    assert_eq!(
        p.chunks[1],
        Chunk {
            seq: 2,
            start: 0,
            len: 7,
            logits: false
        }
    );
    s.complete(&p);
    s.append(1, 6);
    let p = s.schedule();
    assert_eq!(
        p.chunks[1],
        Chunk {
            seq: 2,
            start: 7,
            len: 7,
            logits: false
        }
    );
}

#[test]
fn a_repeated_prompt_reuses_cached_blocks() {
    let mut s = sched(16, 4, 64, 4);
    let prompt: Vec<u32> = (0..10).collect();
    let first = run(&mut s, std::slice::from_ref(&prompt), 3);
    let mut s2 = s;
    s2.add(10, prompt.clone());
    let p = s2.schedule();
    // Two full blocks (8 tokens) come from the cache; only 2 tokens are computed.
    assert_eq!(
        p.chunks,
        vec![Chunk {
            seq: 10,
            start: 8,
            len: 2,
            logits: true
        }]
    );
    assert_eq!(s2.cached_prompt_tokens(10), 8);
    assert_eq!(first[&0], alone(&prompt, 3));
}

#[test]
fn out_of_blocks_preempts_the_newest_and_loses_nothing() {
    // 6 blocks of 2 tokens: three sequences of 4-token prompts generating 6 tokens each
    // need 5 blocks apiece, so they cannot all run at once.
    let mut s = sched(6, 2, 64, 8);
    let prompts: Vec<Vec<u32>> = (0..3).map(|i| vec![i + 1; 4]).collect();
    let out = run(&mut s, &prompts, 6);
    assert!(s.preemptions() > 0, "the cache was meant to be too small");
    for (i, p) in prompts.iter().enumerate() {
        assert_eq!(out[&(i as SeqId)], alone(p, 6), "sequence {i}");
    }
    assert_eq!(s.blocks().available_blocks(), 6, "every block came back");
}

#[test]
fn removing_a_sequence_frees_its_blocks_at_once() {
    let mut s = sched(8, 4, 64, 4);
    s.add(1, vec![1; 10]);
    let p = s.schedule();
    s.complete(&p);
    assert_eq!(s.blocks().available_blocks(), 5);
    s.remove(1);
    assert_eq!(s.blocks().available_blocks(), 8);
    assert!(!s.has_work());
}

proptest! {
    /// Whatever the mix of prompts, budget, concurrency and cache size, every sequence
    /// produces exactly what it produces alone.
    #[test]
    fn batching_preemption_and_caching_never_change_outputs(
        prompts in proptest::collection::vec(proptest::collection::vec(0u32..5, 1..24), 1..12),
        n_gen in 1usize..8,
        block_size in 1usize..5,
        budget in 1usize..40,
        max_running in 1usize..6,
        spare in 0usize..8,
    ) {
        let longest = prompts.iter().map(Vec::len).max().unwrap() + n_gen;
        let blocks = longest.div_ceil(block_size) + spare;
        let mut s = sched(blocks, block_size, budget, max_running);
        let out = run(&mut s, &prompts, n_gen);
        for (i, p) in prompts.iter().enumerate() {
            prop_assert_eq!(&out[&(i as SeqId)], &alone(p, n_gen));
        }
        prop_assert_eq!(s.blocks().available_blocks(), blocks);
    }
}

#[test]
fn attention_pairs_count_the_positions_each_token_attends() {
    // Tokens at positions 0, 1, 2 attend 1, 2 and 3 positions.
    assert_eq!(attention_pairs(0, 3), 6);
    // Two tokens after a 10-token prefix: 11 + 12.
    assert_eq!(attention_pairs(10, 2), 23);
    // One token at position 10 attends 11, the context.
    assert_eq!(attention_pairs(10, 1), 11);
    assert_eq!(attention_pairs(7, 0), 0);
}
