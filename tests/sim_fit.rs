//! `meridian sim fit` on step profiles: a good one gives the model as TOML, a bad one
//! exits with status 2 naming the line; the fleet run is not built yet and says so.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn meridian(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn fits_a_profile_and_refuses_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("steps.csv");
    let mut text = String::from(
        "unix_us,sequences,prefill_sequences,prefill_tokens,decode_tokens,context_tokens,step_us\n",
    );
    for i in 0..100u64 {
        let (pre, dec, ctx) = ((i % 4) * 100, i % 16, (i * 37) % 3000);
        let us = 2000 + 700 * pre + 300 * dec + 3 * ctx;
        text.push_str(&format!("{i},1,1,{pre},{dec},{ctx},{us}\n"));
    }
    std::fs::write(&good, text).unwrap();
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

    let out = meridian(&["sim"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not implemented yet"));
}
