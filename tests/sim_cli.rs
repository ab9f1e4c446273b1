//! `meridian sim` as a capacity planner runs it: `fit` on step profiles (a good one
//! gives the model as TOML, a bad one exits 2 naming the line), a scenario run that
//! writes its report files, `plan`, and scenario mistakes refused with status 2.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn meridian(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(args)
        .output()
        .unwrap()
}

/// A step profile of 100 steps with known costs, written into `dir`.
fn write_profile(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("steps.csv");
    let mut text = String::from(
        "unix_us,sequences,prefill_sequences,prefill_tokens,decode_tokens,context_tokens,step_us\n",
    );
    for i in 0..100u64 {
        let (pre, dec, ctx) = ((i % 4) * 100, i % 16, (i * 37) % 3000);
        let us = 2000 + 700 * pre + 300 * dec + 3 * ctx;
        text.push_str(&format!("{i},1,1,{pre},{dec},{ctx},{us}\n"));
    }
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn fits_a_profile_and_refuses_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_profile(dir.path());
    let out_file = dir.path().join("model.toml");
    let out = meridian(&[
        "sim",
        "fit",
        "--profile",
        good.to_str().unwrap(),
        "--out",
        out_file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(&out_file).unwrap();
    let model: toml::Value = toml::from_str(&written).unwrap();
    let prefill = model["prefill_token_us"].as_float().unwrap();
    assert!((prefill - 700.0).abs() < 1.0, "{written}");

    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "prefill_tokens,decode_tokens,context_tokens,step_us\n1,2,3,4\n5,six,7,8\n",
    )
    .unwrap();
    let out = meridian(&["sim", "fit", "--profile", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3"));
}

#[test]
fn a_reader_gone_from_stdout_ends_the_command_quietly() {
    // `meridian sim fit ... | head -0`: the pipe's read end is closed before it prints.
    let dir = tempfile::tempdir().unwrap();
    let profile = write_profile(dir.path());
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(["sim", "fit", "--profile", profile.to_str().unwrap()])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The status a shell gives a command killed by SIGPIPE, and no panic message.
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

const SCENARIO: &str = r#"
name = "cli"
duration_h = 0.05
[geography]
pops = ["AMS", "IAD"]
[traffic]
mean_rps = 20
lengths = { uniform = { prompt = [10, 200], output = [5, 100] } }
mix = { m = 1 }
[[gpu_kinds]]
name = "H100"
mem_gib = 80
cost = 4
[[models]]
id = "m"
mem_gib = 16
[models.engine.H100]
base_us = 5000
prefill_token_us = 30
decode_token_us = 30
max_running = 64
kv_blocks = 10000
[fleet]
default = { H100 = 8 }
"#;

#[test]
fn runs_a_scenario_and_writes_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("s.toml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    let out_dir = dir.path().join("report");
    let out = meridian(&[
        "sim",
        "--scenario",
        scenario.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--per-request",
        "--quiet",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("simulated requests/s"), "{stdout}");
    for f in [
        "summary.json",
        "pops.csv",
        "regions.csv",
        "timeline.csv",
        "latency.svg",
        "utilisation.svg",
        "requests.csv",
    ] {
        assert!(out_dir.join(f).exists(), "{f} missing");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("summary.json")).unwrap())
            .unwrap();
    let completed = summary["totals"]["completed"].as_u64().unwrap();
    assert!(completed > 1000, "{summary}");
    let rows = std::fs::read_to_string(out_dir.join("requests.csv")).unwrap();
    assert_eq!(rows.lines().count() as u64, completed + 1);

    let out = meridian(&[
        "sim",
        "plan",
        "--scenario",
        scenario.to_str().unwrap(),
        "--slo-ttft-p99",
        "2000",
        "--slo-tpot-p99",
        "100",
        "--quiet",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("gpus after") && stdout.contains("objective met"),
        "{stdout}"
    );
}

#[test]
fn scenario_mistakes_exit_2_naming_them() {
    let out = meridian(&["sim"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--scenario"));
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("s.toml");
    std::fs::write(
        &scenario,
        SCENARIO.replace(
            "mix = { m = 1 }",
            "mix = { m = 1 }
burst = 3",
        ),
    )
    .unwrap();
    let out = meridian(&["sim", "--scenario", scenario.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("burst"));
}
