//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/*`)
//! through its target's check, so a crash the fuzzer once found stays
//! fixed under plain `cargo test`, and checks that the committed seeds are
//! the ones `credential_authority::fuzzing::seeds` makes.
//!
//! `FUZZ_WRITE_SEEDS=1 cargo test --test fuzz_corpus committed_seeds`
//! (re)writes the seed files after a change to the seeds or the formats
//! they follow; any other corpus file is the fuzzer's find, kept as is.

use std::fs;
use std::path::{Path, PathBuf};

use credential_authority::fuzzing::{journal_open_outcome, seeds, Target, TARGETS};
use credential_authority::store::decode_journal_record;

/// `fuzz/corpus/<target>`.
fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Runs the target's check on every file of its corpus; a panic names the
/// file, so it can be run alone with `cargo fuzz run <target> <file>`.
fn replay(target: Target) {
    let dir = corpus_dir(target.name);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable corpus entry").path())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "{}: an empty corpus replays nothing",
        dir.display()
    );
    for file in &files {
        let input = fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let outcome = std::panic::catch_unwind(|| (target.check)(&input));
        assert!(outcome.is_ok(), "{} fails its check", file.display());
    }
    eprintln!("{}: {} inputs replayed", target.name, files.len());
}

/// The target of this name.
fn target(name: &str) -> Target {
    *TARGETS
        .iter()
        .find(|t| t.name == name)
        .expect("a target of that name")
}

#[test]
fn secret_parsing_corpus_replays() {
    replay(target("secret_parsing"));
}

#[test]
fn request_validation_corpus_replays() {
    replay(target("request_validation"));
}

#[test]
fn callers_file_corpus_replays() {
    replay(target("callers_file"));
}

#[test]
fn rpc_bodies_corpus_replays() {
    replay(target("rpc_bodies"));
}

#[test]
fn journal_records_corpus_replays() {
    replay(target("journal_records"));
}

/// Catches: a journal harness whose framing is wrong (a CRC32C over the
/// wrong bytes, an unsalted batch header, the wrong segment file name), so
/// every framed input is refused before replay, or dropped as a torn tail,
/// and the fuzzer never gets past the checksums; and seeds that do not
/// reach what they are named for (store records mangled by the
/// credential-id rewrite, a torn tail that is corruption, damage recovery
/// takes for a torn tail).
#[test]
fn journal_seeds_reach_replay_and_the_refusals_they_name() {
    let journal_seeds: Vec<_> = seeds()
        .into_iter()
        .filter(|s| s.target == "journal_records")
        .collect();
    let seed = |name: &str| {
        &journal_seeds
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no journal seed {name}"))
            .bytes
    };
    let opened = |name: &str| journal_open_outcome(seed(name));
    let replayed = opened("segment").expect("the store's own records");
    assert!(replayed >= 8, "only {replayed} records in the store run");
    assert_eq!(
        opened("records-one-batch"),
        Ok(replayed),
        "the same records framed as one batch"
    );
    assert_eq!(
        opened("segment-torn-tail"),
        Ok(replayed - 1),
        "the torn last batch is dropped, the rest replayed"
    );
    assert_eq!(opened("empty"), Ok(0));
    for (name, reason) in [
        (
            "segment-damaged-middle",
            "is damaged at byte 32 (a batch body checksum mismatch)",
        ),
        (
            "record-cut-short",
            "journal record does not decode: record ends early",
        ),
        ("garbage-header", "file header checksum mismatch"),
    ] {
        let refusal = opened(name).expect_err(name);
        assert!(refusal.contains(reason), "{name}: {refusal}");
    }
    let bare: Vec<_> = journal_seeds
        .iter()
        .filter(|s| s.name.starts_with("record-") && s.name != "record-cut-short")
        .collect();
    assert!(bare.len() >= 6, "{} kinds of record", bare.len());
    for seed in bare {
        let decoded = decode_journal_record(&seed.bytes);
        assert!(
            decoded.is_ok(),
            "{} does not decode: {decoded:?}",
            seed.name
        );
    }
}

/// Catches: a test per target forgotten when a target is added (its corpus
/// would then never replay).
#[test]
fn every_target_has_a_replay_test() {
    let names: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
    assert_eq!(
        names,
        [
            "secret_parsing",
            "request_validation",
            "callers_file",
            "rpc_bodies",
            "journal_records"
        ]
    );
    for name in names {
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/fuzz_targets")
            .join(format!("{name}.rs"));
        let text =
            fs::read_to_string(&source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        assert!(
            text.contains(&format!("credential_authority::fuzzing::{name}(")),
            "{} does not call its check",
            source.display()
        );
    }
}

/// The command that rewrites the seeds.
const REWRITE: &str = "run FUZZ_WRITE_SEEDS=1 cargo test --test fuzz_corpus committed_seeds";

/// Catches: seeds that drifted from the formats (a token format change
/// leaves the committed seeds testing an old shape), a seed never written,
/// or one left behind after its generator was removed. With
/// FUZZ_WRITE_SEEDS=1 it writes them (and removes stale ones) instead.
#[test]
fn committed_seeds_are_the_generated_ones() {
    let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some_and(|v| v == "1");
    let seeds = seeds();
    for target in TARGETS {
        let Ok(entries) = fs::read_dir(corpus_dir(target.name)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a readable corpus entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let known = seeds
                .iter()
                .any(|s| s.target == target.name && name == format!("seed-{}", s.name));
            if name.starts_with("seed-") && !known {
                assert!(
                    write,
                    "{}: no generator makes this seed; {REWRITE}",
                    path.display()
                );
                fs::remove_file(&path).expect("stale seed removed");
            }
        }
    }
    for seed in seeds {
        let path = corpus_dir(seed.target).join(format!("seed-{}", seed.name));
        if write {
            fs::create_dir_all(path.parent().expect("a corpus dir")).expect("corpus dir");
            fs::write(&path, &seed.bytes).expect("seed written");
            continue;
        }
        let committed =
            fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; {REWRITE}", path.display()));
        assert!(
            committed == seed.bytes,
            "{} differs from the generated seed; {REWRITE}",
            path.display()
        );
    }
}
