//! The store benchmark still runs: its smoke mode, on tiny sizes. It checks
//! that the figures are produced and sane, never how fast they are.

#[test]
fn store_benchmark_runs_in_smoke_mode() {
    let out = std::env::temp_dir().join(format!("bench-smoke-{}.json", std::process::id()));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--smoke", "--out", out.to_str().unwrap()])
        .output()
        .expect("the bench binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8_lossy(&output.stdout);
    for row in [
        "store Resolve",
        "floor: SHA-256",
        "peer: Mutex<HashMap>",
        "store Mint",
        "store RevokeAll",
    ] {
        assert!(table.contains(row), "{row} missing from:\n{table}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let figures = json["figures"].as_array().unwrap();
    assert!(figures.len() >= 16);
    assert!(figures
        .iter()
        .all(|f| f["ns_per_op"].as_f64().unwrap() > 0.0));
    let _ = std::fs::remove_file(out);
}
