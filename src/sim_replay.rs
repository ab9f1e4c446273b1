//! `meridian sim replay`: sends a trace's requests to a real worker at the trace's
//! times and measures them as the simulator would, so a simulated run of the same trace
//! can be compared column for column (`requests.csv`, `REQUESTS_HEADER`).
//!
//! Arrivals are open-loop: every request is its own task that sleeps until its time,
//! so a slow request never delays the next one. TTFT and e2e run from the moment a
//! request is sent; a request whose stream fails is counted and printed, never retried.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use meridian_proto::worker::v1 as pb;
use meridian_proto::worker::v1::worker_client::WorkerClient;
use meridian_sim::report::REQUESTS_HEADER;
use meridian_sim::traffic::TRACE_HEADER;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// Connections to the worker; requests take them in turn, so one HTTP/2 connection's
/// stream limit never queues requests on the client side.
const CONNECTIONS: usize = 4;

/// Longest a single request may take before it is counted as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(900);

/// What `meridian sim replay` does.
#[derive(Debug, Clone)]
pub struct ReplayArgs {
    /// Trace with a `tokens` column (`meridian sim trace`).
    pub trace: PathBuf,
    /// The worker's gRPC endpoint, e.g. `http://127.0.0.1:50061`.
    pub worker: String,
    /// Where `requests.csv` goes.
    pub out: PathBuf,
    /// Closed loop: this many clients each send their next request when the last one
    /// ends, ignoring the trace's times (the vLLM/Infire serving benchmark's
    /// `--max-concurrency` with every request queued at once). `None`: open loop, each
    /// request at its time.
    pub concurrency: Option<usize>,
}

/// One request of the trace.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    t_ms: f64,
    model: String,
    output_tokens: u32,
    tokens: Vec<u32>,
}

/// Parses a trace whose header is [`TRACE_HEADER`] followed by `tokens`.
fn parse(text: &str) -> anyhow::Result<Vec<Row>> {
    let mut lines = text.lines().enumerate();
    let want = format!("{TRACE_HEADER},tokens");
    match lines.next() {
        Some((_, h)) if h.trim() == want => {}
        _ => bail!("line 1: the header must be {want} (a trace from `meridian sim trace`)"),
    }
    let mut rows = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let n = i + 1;
        if f.len() != 7 {
            bail!("line {n}: want 7 fields, found {}", f.len());
        }
        let tokens = f[6]
            .split_ascii_whitespace()
            .map(str::parse::<u32>)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("line {n}: bad tokens"))?;
        let prompt_tokens: usize = f[3]
            .parse()
            .with_context(|| format!("line {n}: bad prompt_tokens"))?;
        let row = Row {
            t_ms: f[0]
                .parse()
                .with_context(|| format!("line {n}: bad t_ms"))?,
            model: f[2].to_string(),
            output_tokens: f[4]
                .parse()
                .with_context(|| format!("line {n}: bad output_tokens"))?,
            tokens,
        };
        if !(row.t_ms.is_finite() && row.t_ms >= 0.0) || row.output_tokens == 0 {
            bail!("line {n}: want t_ms >= 0 and output_tokens >= 1");
        }
        if row.tokens.is_empty() || row.tokens.len() != prompt_tokens {
            bail!(
                "line {n}: prompt_tokens is {prompt_tokens} but the tokens column has {}",
                row.tokens.len()
            );
        }
        rows.push(row);
    }
    if rows.is_empty() {
        bail!("the trace has no requests");
    }
    rows.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
    Ok(rows)
}

/// What happened to one request; times in milliseconds from the start of the replay.
#[derive(Debug, Clone)]
struct Outcome {
    arrival_ms: f64,
    prompt_tokens: u32,
    expected_tokens: u32,
    /// Tokens streamed back.
    tokens: u32,
    first_token_ms: Option<f64>,
    end_ms: f64,
    error: Option<String>,
}

impl Outcome {
    fn ttft_ms(&self) -> f64 {
        self.first_token_ms.unwrap_or(self.end_ms) - self.arrival_ms
    }

    fn e2e_ms(&self) -> f64 {
        self.end_ms - self.arrival_ms
    }

    /// Time per output token after the first; 0 for one-token answers.
    fn tpot_ms(&self) -> f64 {
        if self.tokens > 1 {
            (self.e2e_ms() - self.ttft_ms()) / f64::from(self.tokens - 1)
        } else {
            0.0
        }
    }
}

fn since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// Sends one request at its time and follows its stream to the end.
async fn send(
    mut client: WorkerClient<Channel>,
    index: usize,
    row: Row,
    start: Instant,
) -> Outcome {
    tokio::time::sleep_until(start + Duration::from_secs_f64(row.t_ms / 1000.0)).await;
    let arrival_ms = since(start);
    let mut out = Outcome {
        arrival_ms,
        prompt_tokens: row.tokens.len() as u32,
        expected_tokens: row.output_tokens,
        tokens: 0,
        first_token_ms: None,
        end_ms: arrival_ms,
        error: None,
    };
    let request = pb::GenerateRequest {
        request_id: format!("replay-{index}"),
        model: row.model,
        input: Some(pb::generate_request::Input::TokenIds(pb::TokenIds {
            ids: row.tokens,
        })),
        // All zero: greedy.
        sampling: Some(pb::SamplingParams::default()),
        max_tokens: row.output_tokens,
        ignore_eos: true,
        ..Default::default()
    };
    let follow = async {
        let mut stream = client.generate(request).await?.into_inner();
        while let Some(chunk) = stream.message().await? {
            if !chunk.token_ids.is_empty() && out.first_token_ms.is_none() {
                out.first_token_ms = Some(since(start));
            }
            out.tokens += chunk.token_ids.len() as u32;
            if chunk.finish_reason == pb::FinishReason::Error as i32 {
                return Err(tonic::Status::internal(chunk.error_message));
            }
        }
        Ok::<(), tonic::Status>(())
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, follow).await {
        Ok(Ok(())) => {}
        Ok(Err(status)) => {
            out.error = Some(format!("{:?}: {}", status.code(), status.message()));
        }
        Err(_) => out.error = Some(format!("no end after {REQUEST_TIMEOUT:?}")),
    }
    out.end_ms = since(start);
    out
}

/// The `q`-quantile by nearest rank (the comparison script's definition).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// `requests.csv` of the completed requests, by arrival.
fn requests_csv(done: &[&Outcome]) -> String {
    let mut s = format!("{REQUESTS_HEADER}\n");
    for o in done {
        let _ = writeln!(
            s,
            "{:.3},{},{},{:.3},{:.3},{:.3}",
            o.arrival_ms,
            o.prompt_tokens,
            o.tokens,
            o.ttft_ms(),
            o.tpot_ms(),
            o.e2e_ms()
        );
    }
    s
}

/// The summary a terminal shows.
fn summary(outcomes: &[Outcome]) -> String {
    let done: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_none()).collect();
    let mut s = String::new();
    let failed = outcomes.len() - done.len();
    let short = done
        .iter()
        .filter(|o| o.tokens != o.expected_tokens)
        .count();
    let _ = writeln!(
        s,
        "requests: {} sent, {} completed, {failed} failed, {short} with a token count other than the trace's",
        outcomes.len(),
        done.len()
    );
    if done.is_empty() {
        return s;
    }
    let mut ttft: Vec<f64> = done.iter().map(|o| o.ttft_ms()).collect();
    ttft.sort_by(f64::total_cmp);
    let tpot: Vec<f64> = done
        .iter()
        .filter(|o| o.tokens > 1)
        .map(|o| o.tpot_ms())
        .collect();
    let first = done
        .iter()
        .map(|o| o.arrival_ms)
        .fold(f64::INFINITY, f64::min);
    let last = done.iter().map(|o| o.end_ms).fold(0.0, f64::max);
    let span_s = ((last - first) / 1000.0).max(1e-9);
    let tokens: u64 = done.iter().map(|o| u64::from(o.tokens)).sum();
    let prompt: u64 = done.iter().map(|o| u64::from(o.prompt_tokens)).sum();
    let _ = writeln!(
        s,
        "TTFT: mean {:.1} ms, p90 {:.1} ms; TPOT: mean {:.2} ms",
        mean(&ttft),
        quantile(&ttft, 0.9),
        mean(&tpot)
    );
    let _ = writeln!(
        s,
        "throughput: {:.3} req/s, {:.1} output tok/s, {:.1} total (prompt + output) tok/s over {span_s:.1} s",
        done.len() as f64 / span_s,
        tokens as f64 / span_s,
        (tokens + prompt) as f64 / span_s
    );
    s
}

/// The worker's scheduler settings, printed so a simulated engine can match them.
async fn describe_worker(client: &mut WorkerClient<Channel>) -> anyhow::Result<String> {
    let load = client
        .stats(pb::StatsRequest {})
        .await
        .context("the worker's Stats call failed")?
        .into_inner()
        .load
        .unwrap_or_default();
    Ok(format!(
        "worker settings: kv_blocks = {}, block_size = {}, max_batch_tokens = {}, max_running = {}",
        load.kv_blocks_total, load.kv_block_size, load.max_batch_tokens, load.max_running_sequences
    ))
}

async fn connect(worker: &str) -> anyhow::Result<Vec<WorkerClient<Channel>>> {
    let endpoint = Endpoint::from_shared(worker.to_string())
        .with_context(|| format!("bad worker endpoint {worker:?}"))?
        .connect_timeout(Duration::from_secs(10));
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to the worker at {worker}"))?;
        clients.push(
            WorkerClient::new(channel).max_decoding_message_size(meridian_proto::MAX_MESSAGE_BYTES),
        );
    }
    Ok(clients)
}

fn read_trace(path: &Path) -> anyhow::Result<Vec<Row>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read trace {}", path.display()))?;
    parse(&text).with_context(|| format!("trace {}", path.display()))
}

/// Replays the trace against the worker, writes `requests.csv` and prints a summary.
pub async fn replay(args: &ReplayArgs) -> anyhow::Result<()> {
    let rows = read_trace(&args.trace)?;
    let mut clients = connect(&args.worker).await?;
    if let Some(first) = clients.first_mut() {
        println!("{}", describe_worker(first).await?);
    }
    let span_s = rows.last().map_or(0.0, |r| r.t_ms / 1000.0);
    println!(
        "replaying {} requests over {span_s:.1} s to {}",
        rows.len(),
        args.worker
    );
    // A short lead so the first request's timer is not already late.
    let start = Instant::now() + Duration::from_millis(50);
    let mut outcomes = Vec::with_capacity(rows.len());
    if let Some(n) = args.concurrency {
        let rows = std::sync::Arc::new(rows);
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..n.max(1))
            .map(|c| {
                let (rows, next) = (rows.clone(), next.clone());
                let client = clients[c % clients.len()].clone();
                tokio::spawn(async move {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(row) = rows.get(i) else { break };
                        let row = Row {
                            t_ms: 0.0,
                            ..row.clone()
                        };
                        done.push(send(client.clone(), i, row, start).await);
                    }
                    done
                })
            })
            .collect();
        for task in tasks {
            match task.await {
                Ok(o) => outcomes.extend(o),
                Err(e) => eprintln!("a client task failed: {e}"),
            }
        }
    } else {
        let tasks: Vec<_> = rows
            .into_iter()
            .enumerate()
            .map(|(i, row)| {
                let client = clients[i % clients.len()].clone();
                tokio::spawn(send(client, i, row, start))
            })
            .collect();
        for task in tasks {
            match task.await {
                Ok(o) => outcomes.push(o),
                Err(e) => eprintln!("a request task failed: {e}"),
            }
        }
    }
    let mut errors: Vec<&str> = outcomes.iter().filter_map(|o| o.error.as_deref()).collect();
    errors.sort_unstable();
    errors.dedup();
    for e in errors.iter().take(5) {
        eprintln!("request error: {e}");
    }
    let mut done: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_none()).collect();
    done.sort_by(|a, b| a.arrival_ms.total_cmp(&b.arrival_ms));
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&args.out, requests_csv(&done))
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    print!("{}", summary(&outcomes));
    println!("requests written to {}", args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn traces_need_their_tokens() {
        let rows = parse(&format!(
            "{TRACE_HEADER},tokens\n20,AMS,m,3,5,,1 2 3\n10,AMS,m,1,2,,9\n"
        ))
        .unwrap();
        assert_eq!(rows[0].tokens, vec![9]);
        assert_eq!(rows[1].output_tokens, 5);
        let e = parse(&format!("{TRACE_HEADER},tokens\n1,AMS,m,4,5,,1 2 3\n")).unwrap_err();
        assert!(format!("{e:#}").contains("line 2"), "{e:#}");
        assert!(parse(&format!("{TRACE_HEADER}\n1,AMS,m,3,5,\n")).is_err());
    }

    #[test]
    fn tpot_spreads_the_time_after_the_first_token() {
        let o = Outcome {
            arrival_ms: 100.0,
            prompt_tokens: 10,
            expected_tokens: 5,
            tokens: 5,
            first_token_ms: Some(150.0),
            end_ms: 190.0,
            error: None,
        };
        assert_eq!((o.ttft_ms(), o.e2e_ms(), o.tpot_ms()), (50.0, 90.0, 10.0));
        assert_eq!(
            quantile(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 0.9),
            9.0
        );
        assert!(summary(&[o]).contains("1 completed"));
    }
}
