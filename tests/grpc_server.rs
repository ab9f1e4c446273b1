//! A control-plane process serves its generated service with the standard gRPC health
//! service, server reflection (so grpcurl works) and a Prometheus endpoint.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use meridian_proto::control::v1::RegisterRequest;
use meridian_proto::control::v1::control_plane_client::ControlPlaneClient;
use support::{Proc, free_addr, meridian, meridianctl};
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

fn start_control() -> (Proc, String, std::net::SocketAddr) {
    let metrics = free_addr();
    let mut cmd = meridian();
    cmd.args(["control", "--listen", "127.0.0.1:0"])
        .env("MERIDIAN_CONTROL__METRICS_LISTEN", metrics.to_string());
    let proc = Proc::spawn(cmd);
    let line = proc.wait_for_line("listening on", Duration::from_secs(30));
    let endpoint = line.rsplit(' ').next().unwrap().to_string();
    (proc, endpoint, metrics)
}

async fn reflect(
    client: &mut ServerReflectionClient<tonic::transport::Channel>,
    request: MessageRequest,
) -> ServerReflectionResponse {
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap()
}

#[tokio::test]
async fn control_plane_serves_health_reflection_and_metrics() {
    let (_proc, endpoint, metrics) = start_control();
    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();

    // Health: the server as a whole and the ControlPlane service by name.
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "meridian.control.v1.ControlPlane"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "health of {service:?}");
    }

    // Reflection: the services are listed and their descriptors resolve.
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let listed = reflect(&mut reflection, MessageRequest::ListServices(String::new())).await;
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("unexpected reflection answer {listed:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for wanted in ["meridian.control.v1.ControlPlane", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} missing from {names:?}"
        );
    }
    let symbol = reflect(
        &mut reflection,
        MessageRequest::FileContainingSymbol("meridian.worker.v1.Worker".into()),
    )
    .await;
    let Some(MessageResponse::FileDescriptorResponse(files)) = symbol.message_response else {
        panic!("unexpected reflection answer {symbol:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());

    // The service answers: a registration naming no catalog PoP is refused with the
    // reason; the policy starts empty at revision 0, a bad one is refused naming the
    // field, a stale revision is ABORTED, and a good one moves the revision.
    let mut client = ControlPlaneClient::new(channel);
    let err = client
        .register(RegisterRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("catalog"), "{}", err.message());
    use meridian_proto::control::v1 as cpb;
    let policy = client
        .get_policy(cpb::GetPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((policy.revision, policy.pins.len()), (0, 0));
    let pin = |site: &str| cpb::Pin {
        model: "SmolLM2-135M-Instruct".into(),
        site: site.into(),
        min_replicas: 1,
    };
    let err = client
        .set_policy(cpb::Policy {
            pins: vec![pin("ZZZ")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("pins[0].site"), "{}", err.message());
    let set = client
        .set_policy(cpb::Policy {
            pins: vec![pin("AMS")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.revision, 1);
    let err = client
        .set_policy(cpb::Policy {
            revision: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted, "{}", err.message());

    // meridianctl's health check agrees.
    let out = meridianctl()
        .args(["health", "--endpoint", &endpoint])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("SERVING"));

    // Prometheus exposition over HTTP.
    let mut conn = std::net::TcpStream::connect(metrics).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[test]
fn help_lists_every_subcommand() {
    let out = meridian().arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for cmd in [
        "up",
        "control",
        "pop",
        "router",
        "sim",
        "generate",
        "models",
        "placement",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(cmd)),
            "meridian --help lacks {cmd}:\n{help}"
        );
    }
    let out = meridianctl().arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for cmd in [
        "health",
        "fleet",
        "placement",
        "drain",
        "cordon",
        "policy",
        "route",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(cmd)),
            "meridianctl --help lacks {cmd}:\n{help}"
        );
    }
}

#[test]
fn print_config_shows_the_effective_configuration() {
    let out = meridian()
        .args(["up", "--print-config", "--pops", "FRA,SIN"])
        .env("MERIDIAN_UP__ROUTER__MAX_RETRIES", "7")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("\"FRA\"") && text.contains("\"SIN\"") && !text.contains("\"AMS\""),
        "{text}"
    );
    assert!(text.contains("max_retries = 7"), "{text}");
}
