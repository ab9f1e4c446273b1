//! `meridian up` on the real model, driven by the official `openai` Python package:
//! chat, streamed chat, completion, models list, geography, residency and bad input.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Proc, meridian};

#[test]
fn meridian_up_answers_the_openai_client() {
    let mut cmd = meridian();
    cmd.args(["up", "--pops", "IAD,AMS,SIN"])
        .env("MERIDIAN_UP__ENGINE__KV_MEMORY_BYTES", "134217728");
    let proc = Proc::spawn(cmd);
    let line = proc.wait_for_line("router listening on", Duration::from_secs(120));
    let base = line.rsplit(' ').next().unwrap().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let out = Command::new("python3")
        .args([script, &base, "SmolLM2-135M-Instruct"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the openai client checks failed:\n{stdout}"
    );
    assert!(stdout.contains("all checks passed"));
}
