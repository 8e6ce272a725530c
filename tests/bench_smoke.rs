//! The benchmark suite still runs: its smoke mode, on tiny sizes and short
//! loads (store in-process, the real server under h2load, Redis under
//! redis-benchmark). It checks that every figure is produced and that the
//! measured gRPC calls succeeded, never how fast anything was.

#[test]
fn benchmark_suite_runs_in_smoke_mode() {
    let out = std::env::temp_dir().join(format!("bench-smoke-{}.json", std::process::id()));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--smoke", "--out", out.to_str().unwrap()])
        .args(["--server", env!("CARGO_BIN_EXE_credential-authority")])
        .output()
        .expect("the bench binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8_lossy(&output.stdout);
    for row in [
        "| Resolve |",
        "| floor: SHA-256 of the token |",
        "| peer: Mutex<HashMap> Resolve |",
        "| Touch (by credential id) |",
        "| Mint (token generated, hashed, stored) |",
        "| RevokeThread (1 credential each) |",
        "| RevokeAll (one call) |",
        "| Resolve, while the sweeper removes them |",
        "| Health/Check |",
        "| Mint |",
        "| Resolve, caller authentication off |",
        "gRPC Resolve with caller authentication >= 0.95x Resolve without",
        "| GETEX key EX 1800 |",
        "resident bytes per credential",
        "Machine: ",
    ] {
        assert!(table.contains(row), "{row} missing from:\n{table}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let figures = json["figures"].as_array().unwrap();
    // 2 sizes x (4 per thread count x 2 + 2 + 1) + storm 2 + gRPC 4 + Redis 1.
    assert!(figures.len() >= 29, "{} figures", figures.len());
    assert!(figures
        .iter()
        .all(|f| f["ops_per_sec"].as_f64().unwrap() > 0.0));
    let checks = json["checks"].as_array().unwrap();
    let verified = checks
        .iter()
        .find(|c| {
            c["target"]
                .as_str()
                .unwrap()
                .starts_with("every measured gRPC call")
        })
        .expect("the gRPC calls are verified");
    assert_eq!(verified["met"], true, "{verified}");
    let _ = std::fs::remove_file(out);
}
