//! The simulator's real data: ShareGPT conversations tokenized exactly as a worker
//! serving SmolLM2 tokenizes them, as a table of request lengths (`sharegpt_lengths`,
//! cached) and as replayable traces of real prompts (`meridian sim trace`).
//!
//! The selection follows vLLM's serving benchmark: a conversation's first human turn is
//! the prompt (one user message, chat-templated), the token count of the first gpt turn
//! is the output length, and pairs with fewer than 4 tokens on either side, a prompt
//! over 1024 tokens or more than 2048 in all are dropped.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use meridian_engine::engine::{Input, prompt_tokens};
use meridian_engine::model::checkpoint::Checkpoint;
use meridian_engine::tokenizer::{ChatMessage, Tokenizer};
use meridian_sim::traffic::{LengthTable, TRACE_HEADER};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use crate::assets;

/// Where the lengths table is cached, relative to the cache directory.
const LENGTHS_PATH: &str = "datasets/sharegpt-lengths-smollm2.csv";

/// vLLM's serving-benchmark filter: shortest prompt and output, longest prompt, longest
/// prompt plus output (tokens).
const MIN_TOKENS: usize = 4;
const MAX_PROMPT: usize = 1024;
const MAX_TOTAL: usize = 2048;

/// One ShareGPT record as the file holds it (other fields are ignored).
#[derive(Debug, Deserialize)]
struct RawConversation {
    #[serde(default)]
    conversations: Vec<Turn>,
}

#[derive(Debug, Deserialize)]
struct Turn {
    from: String,
    value: String,
}

/// The first exchange of a conversation: what a user asked and what the model answered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Exchange {
    human: String,
    gpt: String,
}

/// A kept conversation, tokenized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// The prompt's token ids, chat template applied, as the worker computes them.
    pub prompt: Vec<u32>,
    /// Tokens of the first answer.
    pub output_tokens: u32,
}

/// The first human/gpt exchange of every complete conversation in a ShareGPT JSON array
/// that may be cut short: objects are read one at a time and reading stops, without
/// error, at an object the end of the data cuts off. Conversations that do not open
/// with a human turn followed by a gpt turn are skipped.
fn parse_exchanges(bytes: &[u8]) -> anyhow::Result<(Vec<Exchange>, usize)> {
    let mut pos = skip_ws(bytes, 0);
    if bytes.get(pos) != Some(&b'[') {
        bail!("expected a JSON array at byte {pos}");
    }
    pos += 1;
    let mut out = Vec::new();
    let mut complete = 0;
    loop {
        while let Some(b',' | b' ' | b'\n' | b'\r' | b'\t') = bytes.get(pos) {
            pos += 1;
        }
        match bytes.get(pos) {
            None | Some(b']') => break,
            Some(_) => {}
        }
        let mut stream =
            serde_json::Deserializer::from_slice(&bytes[pos..]).into_iter::<RawConversation>();
        match stream.next() {
            Some(Ok(raw)) => {
                pos += stream.byte_offset();
                complete += 1;
                if let [first, second, ..] = raw.conversations.as_slice()
                    && first.from == "human"
                    && second.from == "gpt"
                {
                    out.push(Exchange {
                        human: first.value.clone(),
                        gpt: second.value.clone(),
                    });
                }
            }
            // The cut: the last object runs into the end of the data.
            Some(Err(e)) if e.is_eof() => break,
            Some(Err(e)) => bail!(
                "bad JSON in conversation {} (byte {pos}): {e}",
                complete + 1
            ),
            None => break,
        }
    }
    Ok((out, complete))
}

fn skip_ws(bytes: &[u8], mut pos: usize) -> usize {
    while bytes.get(pos).is_some_and(u8::is_ascii_whitespace) {
        pos += 1;
    }
    pos
}

/// Tokenizes one exchange; `None` when the filter drops it.
fn tokenize(tokenizer: &Tokenizer, exchange: &Exchange) -> anyhow::Result<Option<Conversation>> {
    let input = Input::Chat {
        messages: vec![ChatMessage::user(exchange.human.clone())],
        add_generation_prompt: true,
    };
    let prompt = prompt_tokens(tokenizer, &input)?;
    let answer = tokenizer.encode(&exchange.gpt, false)?;
    let bos = tokenizer.add_bos() && answer.first() == tokenizer.bos_id().as_ref();
    let output = answer.len() - usize::from(bos);
    let keep = prompt.len() >= MIN_TOKENS
        && output >= MIN_TOKENS
        && prompt.len() <= MAX_PROMPT
        && prompt.len() + output <= MAX_TOTAL;
    Ok(keep.then_some(Conversation {
        prompt,
        output_tokens: output as u32,
    }))
}

/// Every kept ShareGPT conversation, in file order, tokenized by `tokenizer` (both
/// cores: tokenizing 17,671 conversations is most of the work).
fn kept_conversations(json: &Path, tokenizer: &Tokenizer) -> anyhow::Result<Vec<Conversation>> {
    let bytes = std::fs::read(json).with_context(|| format!("cannot read {}", json.display()))?;
    let (exchanges, complete) =
        parse_exchanges(&bytes).with_context(|| format!("cannot parse {}", json.display()))?;
    drop(bytes);
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let chunk = exchanges.len().div_ceil(threads).max(1);
    let parts: Vec<anyhow::Result<Vec<Conversation>>> = std::thread::scope(|s| {
        let handles: Vec<_> = exchanges
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut kept = Vec::new();
                    for e in part {
                        kept.extend(tokenize(tokenizer, e)?);
                    }
                    Ok(kept)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a tokenizing thread panicked")))
            })
            .collect()
    });
    let mut kept = Vec::with_capacity(exchanges.len());
    for part in parts {
        kept.extend(part?);
    }
    tracing::info!(
        conversations = complete,
        first_exchanges = exchanges.len(),
        kept = kept.len(),
        "ShareGPT tokenized"
    );
    if kept.is_empty() {
        bail!("no ShareGPT conversation passed the length filter");
    }
    Ok(kept)
}

/// The kept conversations, pulling the dataset and the model when they are missing.
fn load_conversations() -> anyhow::Result<Vec<Conversation>> {
    let (cache, python) = (assets::cache_dir(), assets::python());
    let json = assets::pull(&assets::SHAREGPT, &cache, &python)?;
    let model = assets::pull(&assets::SMOLLM2, &cache, &python)?;
    let tokenizer = Checkpoint::open(model.path())
        .and_then(|c| c.tokenizer())
        .with_context(|| format!("cannot load the tokenizer of {}", model.path().display()))?;
    kept_conversations(json.path(), &tokenizer)
}

fn lengths_csv(kept: &[Conversation]) -> String {
    let mut s = String::from("prompt_tokens,output_tokens\n");
    for c in kept {
        let _ = writeln!(s, "{},{}", c.prompt.len(), c.output_tokens);
    }
    s
}

/// Writes `body` to `path` through a temporary file beside it, so a reader never sees
/// half a file.
fn write_atomic(path: &Path, body: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(body).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// Caches the lengths of `kept` unless the cache is there.
fn cache_lengths(path: &Path, kept: &[Conversation]) -> anyhow::Result<()> {
    if !path.exists() {
        write_atomic(path, lengths_csv(kept).as_bytes())?;
    }
    Ok(())
}

/// ShareGPT's (prompt, output) token counts on SmolLM2's tokenizer, one pair per kept
/// conversation. Read from the cache (`<cache>/datasets/sharegpt-lengths-smollm2.csv`);
/// built on first use, which fetches the dataset and the model if needed and takes a
/// while.
pub fn sharegpt_lengths() -> anyhow::Result<LengthTable> {
    let path = assets::cache_dir().join(LENGTHS_PATH);
    if let Ok(text) = std::fs::read_to_string(&path) {
        match LengthTable::parse_csv(&text) {
            Ok(table) => return Ok(table),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "bad cached ShareGPT lengths; building them again")
            }
        }
    }
    eprintln!(
        "building the ShareGPT length table (once; cached at {})",
        path.display()
    );
    let kept = load_conversations()?;
    let csv = lengths_csv(&kept);
    write_atomic(&path, csv.as_bytes())?;
    Ok(LengthTable::parse_csv(&csv)?)
}

/// What `meridian sim trace` writes.
#[derive(Debug, Clone)]
pub struct TraceArgs {
    /// Requests in the trace.
    pub requests: usize,
    /// Mean arrival rate, requests per second (Poisson arrivals).
    pub rate: f64,
    pub seed: u64,
    pub out: PathBuf,
    /// Catalog site the requests come from.
    pub region: String,
    /// Model id every request asks for (the worker's served id).
    pub model: String,
    /// Cap on each request's output tokens.
    pub max_output: Option<u32>,
}

/// The trace's rows (header included): `requests` conversations drawn uniformly from
/// `kept`, arriving as a Poisson process at `rate`, the first at 0.
fn trace_csv(kept: &[Conversation], args: &TraceArgs) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut s = format!("{TRACE_HEADER},tokens\n");
    let mut t_ms = 0.0;
    for i in 0..args.requests {
        if i > 0 {
            // Exponential gap; 1 - U is in (0, 1], so the log is finite.
            let u: f64 = rng.random();
            t_ms += -(1.0 - u).ln() / args.rate * 1000.0;
        }
        let c = &kept[rng.random_range(0..kept.len())];
        let output = args
            .max_output
            .map_or(c.output_tokens, |m| c.output_tokens.min(m));
        let _ = write!(
            s,
            "{t_ms:.3},{},{},{},{output},,",
            args.region,
            args.model,
            c.prompt.len()
        );
        for (j, id) in c.prompt.iter().enumerate() {
            let sep = if j == 0 { "" } else { " " };
            let _ = write!(s, "{sep}{id}");
        }
        s.push('\n');
    }
    s
}

/// Writes a trace of ShareGPT requests (CSV with a `tokens` column, for `meridian sim
/// --trace` and `meridian sim replay`), and the lengths cache if it is missing.
pub fn write_trace(args: &TraceArgs) -> anyhow::Result<()> {
    if args.requests == 0 || !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("want --requests >= 1 and --rate > 0");
    }
    if args.max_output == Some(0) {
        bail!("--max-output must be at least 1");
    }
    if args.region.contains(',') || args.model.contains(',') {
        bail!("region and model must not contain commas");
    }
    let kept = load_conversations()?;
    cache_lengths(&assets::cache_dir().join(LENGTHS_PATH), &kept)?;
    write_atomic(&args.out, trace_csv(&kept, args).as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const DATA: &str = r#" [
  {"id": "a", "conversations": [{"from": "human", "value": "Hi \"there\""}, {"from": "gpt", "value": "Hello!"}]},
  {"id": "b", "conversations": [{"from": "gpt", "value": "I start"}, {"from": "human", "value": "no"}]},
  {"id": "c", "conversations": [{"from": "human", "value": "only me"}]},
  {"id": "d", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}, {"from": "human", "value": "more"}]},
  {"id": "e", "conversations": [{"from": "human", "value": "cut he"#;

    #[test]
    fn a_cut_array_yields_its_complete_conversations() {
        let (ex, complete) = parse_exchanges(DATA.as_bytes()).unwrap();
        assert_eq!(complete, 4);
        assert_eq!(
            ex,
            vec![
                Exchange {
                    human: "Hi \"there\"".into(),
                    gpt: "Hello!".into()
                },
                Exchange {
                    human: "q".into(),
                    gpt: "a".into()
                },
            ]
        );
        // Cut anywhere after the bracket: never an error, never a partial object.
        let open = DATA.find('[').unwrap() + 1;
        for end in open..DATA.len() {
            let (ex, complete) = parse_exchanges(&DATA.as_bytes()[..end]).unwrap();
            assert!(ex.len() <= 2 && complete <= 4, "cut at {end}");
        }
        // A whole array ends at its bracket (the last one has no gpt turn: skipped).
        let whole = format!("{DATA}\"}}]}}]");
        let (ex, complete) = parse_exchanges(whole.as_bytes()).unwrap();
        assert_eq!((ex.len(), complete), (2, 5));
        // Garbage that is not a cut is an error naming the conversation.
        let e = parse_exchanges(b"[{\"conversations\": []}, {\"conversations\": 3}]").unwrap_err();
        assert!(e.to_string().contains("conversation 2"), "{e}");
        assert!(parse_exchanges(b"{}").is_err());
    }

    #[test]
    fn traces_are_seeded_poisson_and_capped() {
        let kept = vec![
            Conversation {
                prompt: vec![1, 2, 3, 4],
                output_tokens: 10,
            },
            Conversation {
                prompt: vec![1, 2, 5, 6, 7],
                output_tokens: 500,
            },
        ];
        let args = TraceArgs {
            requests: 2000,
            rate: 4.0,
            seed: 7,
            out: PathBuf::new(),
            region: "AMS".into(),
            model: "m".into(),
            max_output: Some(100),
        };
        let text = trace_csv(&kept, &args);
        assert_eq!(text, trace_csv(&kept, &args));
        let rows = meridian_sim::traffic::parse_trace(&text).unwrap();
        assert_eq!(rows.len(), 2000);
        assert_eq!(rows[0].t_ms, 0.0);
        let span_s = rows[1999].t_ms / 1000.0;
        assert!(
            (1999.0 / span_s - 4.0).abs() < 0.4,
            "rate {}",
            1999.0 / span_s
        );
        assert!(
            rows.iter()
                .all(|r| r.output_tokens <= 100 && r.region == "AMS")
        );
        let line = text.lines().nth(1).unwrap();
        let tokens = line.rsplit(',').next().unwrap();
        assert!(tokens == "1 2 3 4" || tokens == "1 2 5 6 7", "{line}");
    }
}
