//! Generates the tonic/prost code from `proto/**/*.proto` with `protox`, a protobuf
//! compiler written in Rust, so a fresh machine builds with cargo alone (no system
//! `protoc`). The encoded descriptor set is written beside the code for gRPC reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/meridian/worker/v1/worker.proto",
    "proto/meridian/control/v1/control.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("meridian_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
