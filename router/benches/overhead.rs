//! Router overhead: the latency and throughput a request sees through the router to a
//! worker, against calling that worker's gRPC `Generate` directly, in one run.
//!
//! The worker is an in-process stub that answers every request at once with a one-token
//! completion, so the difference between the two paths is what the router adds: HTTP
//! parsing, OpenAI validation, scoring, the gRPC hop's client side, the JSON answer.
//! Both paths run over loopback TCP with persistent connections.
//!
//! `cargo bench -p meridian-router --bench overhead [-- --requests 20000 --concurrency 16]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use meridian_proto::worker::v1 as pb;
use meridian_proto::worker::v1::worker_client::WorkerClient;
use meridian_proto::worker::v1::worker_server::{Worker as WorkerRpc, WorkerServer};
use meridian_router::RouterConfig;
use meridian_router::fleet::{FleetView, Load, Worker};
use meridian_router::state::RouterState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Request, Response, Status};

const MODEL: &str = "stub-model";

/// Answers every Generate with one finished chunk.
struct Stub;

#[tonic::async_trait]
impl WorkerRpc for Stub {
    type GenerateStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateResponse, Status>> + Send>>;

    async fn generate(
        &self,
        _request: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let chunk = pb::GenerateResponse {
            text: "ok".into(),
            token_ids: vec![7],
            logprobs: vec![],
            finish_reason: pb::FinishReason::Stop as i32,
            usage: Some(pb::Usage {
                prompt_tokens: 12,
                completion_tokens: 1,
                cached_prompt_tokens: 0,
                queue_ms: 0,
            }),
            error_message: String::new(),
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(chunk)]))))
    }

    async fn health(
        &self,
        _request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        Ok(Response::new(pb::HealthResponse::default()))
    }

    async fn stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        Ok(Response::new(pb::StatsResponse::default()))
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

const BODY: &str = r#"{"model":"stub-model","messages":[{"role":"user","content":"Say hello to the router benchmark."}],"max_tokens":16}"#;

/// One keep-alive HTTP/1.1 connection to the router.
struct Http {
    conn: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl Http {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        let conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.set_nodelay(true).unwrap();
        Self {
            conn,
            buf: Vec::with_capacity(4096),
        }
    }

    async fn chat(&mut self) {
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{BODY}",
            BODY.len()
        );
        self.conn.write_all(req.as_bytes()).await.unwrap();
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.conn.read(&mut chunk).await.unwrap();
            assert!(n > 0, "router closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&self.buf);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .expect("content-length")
                    .parse()
                    .unwrap();
                if body.len() >= len {
                    return;
                }
            }
        }
    }
}

async fn direct(client: &mut WorkerClient<tonic::transport::Channel>) {
    let req = pb::GenerateRequest {
        request_id: String::new(),
        model: MODEL.into(),
        input: Some(pb::generate_request::Input::Chat(pb::ChatInput {
            messages: vec![pb::ChatMessage {
                role: "user".into(),
                content: "Say hello to the router benchmark.".into(),
            }],
            add_generation_prompt: true,
        })),
        sampling: Some(pb::SamplingParams::default()),
        max_tokens: 16,
        ..Default::default()
    };
    let mut stream = client.generate(req).await.unwrap().into_inner();
    while stream.message().await.unwrap().is_some() {}
}

/// Sequential latencies, then throughput at `concurrency`.
async fn measure<F, Fut, C>(
    mut make: impl FnMut() -> Fut,
    one: F,
    n: usize,
    concurrency: usize,
) -> (Vec<Duration>, f64)
where
    Fut: std::future::Future<Output = C>,
    C: Send + 'static,
    F: Fn(&mut C) -> Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>
        + Copy
        + Send
        + Sync
        + 'static,
{
    let mut c = make().await;
    for _ in 0..n / 10 {
        one(&mut c).await;
    }
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        one(&mut c).await;
        lat.push(t.elapsed());
    }
    lat.sort();
    let per = n / concurrency;
    let mut conns = Vec::new();
    for _ in 0..concurrency {
        conns.push(make().await);
    }
    let t = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                for _ in 0..per {
                    one(&mut c).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let rps = (per * concurrency) as f64 / t.elapsed().as_secs_f64();
    (lat, rps)
}

fn main() {
    let n = arg("--requests", 20_000);
    let concurrency = arg("--concurrency", 16);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let worker_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let worker_addr = worker_listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(WorkerServer::new(Stub))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                    worker_listener,
                )),
        );
        let endpoint = format!("http://{worker_addr}");
        let config = RouterConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            site: "FRA".into(),
            ..Default::default()
        };
        let state = Arc::new(RouterState::new(config, None).unwrap());
        let catalog = meridian_proto::catalog::Catalog::builtin();
        let site_index = catalog.index_of("FRA").unwrap();
        state.set_view(FleetView::new(
            1,
            vec![Worker {
                pop: "FRA".into(),
                site_index,
                jurisdiction: "EU".into(),
                worker_id: "stub0".into(),
                endpoint: endpoint.clone(),
                model: MODEL.into(),
                warm: true,
                healthy: true,
                cordoned: false,
                load: Load::default(),
                ..Default::default()
            }],
        ));
        let router_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let router_addr = router_listener.local_addr().unwrap();
        tokio::spawn(meridian_router::server::serve(
            state,
            router_listener,
            std::future::pending::<()>(),
        ));

        let (direct_lat, direct_rps) = measure(
            || {
                let endpoint = endpoint.clone();
                async move { WorkerClient::connect(endpoint).await.unwrap() }
            },
            |c| Box::pin(direct(c)),
            n,
            concurrency,
        )
        .await;
        let (router_lat, router_rps) = measure(
            || Http::connect(router_addr),
            |c| Box::pin(c.chat()),
            n,
            concurrency,
        )
        .await;
        println!("| path | p50 (µs) | p99 (µs) | req/s at {concurrency} connections |");
        println!("|---|---|---|---|");
        println!(
            "| worker gRPC, direct | {:.0} | {:.0} | {:.0} |",
            percentile(&direct_lat, 0.5),
            percentile(&direct_lat, 0.99),
            direct_rps
        );
        println!(
            "| through the router (HTTP → gRPC) | {:.0} | {:.0} | {:.0} |",
            percentile(&router_lat, 0.5),
            percentile(&router_lat, 0.99),
            router_rps
        );
        println!(
            "router adds: p50 {:.0} µs, p99 {:.0} µs (target p99 < 300 µs)",
            percentile(&router_lat, 0.5) - percentile(&direct_lat, 0.5),
            percentile(&router_lat, 0.99) - percentile(&direct_lat, 0.99)
        );
    });
}
