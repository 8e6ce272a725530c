//! The seed corpora: a few meaningful inputs per target, made by code so
//! they follow the formats as they change, and committed as
//! `fuzz/corpus/<target>/seed-<name>` (`tests/fuzz_corpus.rs` checks that
//! the committed files are these and rewrites them on request).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;

use super::journal::{
    batch, file_header, framed_input, segment_file_name, ScratchDir, FAKE_NOW, SALT,
};
use crate::auth::key::KeyDigest;
use crate::clock::{FakeClock, Millis};
use crate::pb;
use crate::store::{DurableOptions, NewCredential, Reach, RevokeAllTarget, Store, StoreConfig};
use crate::token::{CredentialId, SecretFormat, TokenDigest, CALLER_KEY_PREFIX, TOKEN_PREFIX};

/// One seed input of one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// The target whose corpus it seeds.
    pub target: &'static str,
    /// Its file is `seed-<name>`.
    pub name: &'static str,
    /// The input.
    pub bytes: Vec<u8>,
}

/// A token made from fixed bytes, so the seeds are the same on every run.
fn token(fill: u8) -> String {
    SecretFormat {
        prefix: TOKEN_PREFIX,
    }
    .encode(&[fill; 32])
}

/// A caller key made from fixed bytes.
fn caller_key(fill: u8) -> String {
    SecretFormat {
        prefix: CALLER_KEY_PREFIX,
    }
    .encode(&[fill; 32])
}

/// Every seed of every target.
pub fn seeds() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let mut add = |target, name, bytes: Vec<u8>| {
        seeds.push(Seed {
            target,
            name,
            bytes,
        })
    };

    // Tokens and keys: valid ones, the classic wrong inputs, and the
    // structured form (32 secret bytes, then position/byte edits).
    let typo = token(3).replacen('A', "B", 1);
    for (name, text) in [
        ("token", token(1)),
        ("caller-key", caller_key(2)),
        ("bearer-token", format!("Bearer {}", token(1))),
        ("bearer-key", format!("Bearer {}", caller_key(2))),
        ("typo", typo),
        ("padded", format!(" {}\n", token(4))),
        ("empty", String::new()),
    ] {
        add("secret_parsing", name, text.into_bytes());
    }
    let mut structured = vec![0x5a; 32];
    structured.extend_from_slice(&[48, b'B', 20, b'+', 60, 0]);
    add("secret_parsing", "structured-edits", structured);

    // Requests, encoded as the wire carries them: the validation target
    // decodes them, the RPC target sends them raw and framed.
    for (name, bytes) in requests() {
        add("request_validation", name, bytes.clone());
        add("rpc_bodies", name, bytes);
    }
    let mint = requests().remove(0).1;
    let mut framed = vec![0];
    framed.extend_from_slice(&(mint.len() as u32).to_be_bytes());
    framed.extend_from_slice(&mint);
    add("rpc_bodies", "mint-framed", framed.clone());
    framed[0] = 1;
    add("rpc_bodies", "mint-compressed-flag", framed);
    // Frames tonic refused as INTERNAL or OUT_OF_RANGE without ErrorInfo
    // before `undecodable` (sent raw, each is the whole body).
    add("rpc_bodies", "frame-cut-short", vec![0, 0, 0, 0, 9, 0x0a]);
    add(
        "rpc_bodies",
        "frame-too-large",
        vec![0, 0xff, 0xff, 0xff, 0xff],
    );
    add("rpc_bodies", "field-not-utf8", vec![0x0a, 0x02, 0xc3, 0x28]);

    for (name, text) in callers_files() {
        add("callers_file", name, text.into_bytes());
    }
    for (name, bytes) in journal_inputs() {
        add("journal_records", name, bytes);
    }
    seeds
}

/// The journal target's seeds (see `super::journal` for the two modes the
/// first byte picks): the records a small durable store wrote, as a valid
/// segment (one batch per record), torn at its end, damaged in its middle,
/// and framed as one batch; each kind of record alone, for the decoder; a
/// Mint record cut short; a file header that is garbage; and nothing.
fn journal_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let records = store_records();
    let mut segment = vec![0];
    segment.extend(file_header(SALT));
    for (clock, payload) in &records {
        segment.extend(batch(&[payload], *clock, SALT));
    }
    let torn = segment[..segment.len() - 3].to_vec();
    let mut damaged = segment.clone();
    // The first payload byte of the first batch: its body CRC fails, and
    // valid batches follow, so it cannot be a torn final write.
    damaged[1 + 32 + 24 + 8] ^= 0xff;
    let payloads: Vec<&[u8]> = records.iter().map(|(_, p)| p.as_slice()).collect();
    let minted = payloads[0];
    let mut inputs = vec![
        ("segment", segment),
        ("segment-torn-tail", torn),
        ("segment-damaged-middle", damaged),
        ("records-one-batch", framed_input(&payloads)),
        (
            "record-cut-short",
            framed_input(&[&minted[..minted.len() - 5]]),
        ),
        ("garbage-header", {
            let mut garbage = vec![0];
            garbage.extend_from_slice(b"CAJRNL\0\x01");
            garbage.extend_from_slice(&[0xa5; 40]);
            garbage
        }),
        ("empty", Vec::new()),
    ];
    let mut seen = Vec::new();
    for payload in payloads {
        let kind = payload[0];
        if !seen.contains(&kind) {
            seen.push(kind);
            inputs.push((record_kind(kind), payload.to_vec()));
        }
    }
    inputs
}

/// The seed name of a bare record of the kind its tag byte names (the tags
/// of `src/store/durable/event.rs`).
fn record_kind(tag: u8) -> &'static str {
    match tag {
        1 => "record-minted",
        2 => "record-renewed",
        3 => "record-credential-revoked",
        4 => "record-thread-revoked",
        5 => "record-scopes-stamped",
        10 => "record-swept",
        11 => "record-closed",
        12 => "record-opened",
        _ => panic!("a small store run wrote a record of kind {tag}, which has no seed name"),
    }
}

/// Runs a small durable store (on a fake clock, with fixed token digests)
/// through Mint, a rotation, RevokeThread, RevokeCredential, RevokeAll, a
/// sweep and a clean stop, and reads back the records it journaled, with
/// the newest time of each one's batch. Credential ids are random, so each
/// is replaced by fixed bytes (keeping its last byte, which routes it to
/// its digest's shard); everything else the store writes is the same on
/// every run. The batches are not kept as the store formed them: which
/// unawaited record rides with which batch depends on the writer thread's
/// timing (their times do not: the run syncs before it moves the clock).
fn store_records() -> Vec<(Millis, Vec<u8>)> {
    let dir = ScratchDir::new("fuzz-seeds");
    let clock = FakeClock::new(FAKE_NOW);
    let (store, _) = Store::open(
        StoreConfig::default(),
        Arc::new(clock.clone()),
        DurableOptions::new(dir.path()),
    )
    .expect("a fresh durable store opens");
    let digest = |fill| TokenDigest::of(&token(fill));
    let mint = |fill, thread_id, provider_instance_id, minted_by, replace_previous| {
        store
            .mint(
                digest(fill),
                NewCredential {
                    thread_id,
                    provider_instance_id,
                    provider_kind: Some("claude"),
                    idle_timeout: Some(Duration::from_secs(600)),
                    max_lifetime: None,
                    replace_previous,
                    scopes: Arc::from([Box::from("repo:read"), Box::from("repo:write")]),
                    labels: Arc::from([(Box::from("env"), Box::from("dev"))]),
                    minted_by,
                    reach: Reach::MintedBy(minted_by),
                    owner_quota: None,
                },
            )
            .expect("the seed Mint succeeds")
            .credential_id
    };
    let second = Duration::from_secs(1);
    let first = mint(1, "thread-1", "claude-adapter-1", "claude-adapter", false);
    clock.advance(second);
    store.resolve(&digest(1), Some("repo:read")).expect("live");
    clock.advance(second);
    let rotated = mint(2, "thread-1", "claude-adapter-1", "claude-adapter", true);
    let other = mint(3, "thread-2", "codex-adapter-1", "codex-adapter", false);
    clock.advance(second);
    store.revoke_thread("thread-2", Reach::MintedBy("codex-adapter"));
    store
        .revoke_credential(&first, Reach::All)
        .expect("an administrator's revocation");
    let last = mint(4, "thread-3", "codex-adapter-1", "codex-adapter", false);
    clock.advance(second);
    store.revoke_all(RevokeAllTarget::Instance("codex-adapter-1"));
    store.sweep();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    // The sweep's records are unawaited: written now, they carry this
    // time in every run, whether or not the writer had already taken them.
    runtime.block_on(store.sync()).expect("synced");
    clock.advance(second);
    store.resolve(&digest(2), None).expect("still live");
    runtime.block_on(store.close()).expect("a clean stop");
    drop(store);

    let path = dir.path().join(segment_file_name());
    let file = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let fixed: Vec<(CredentialId, [u8; 16])> = [first, rotated, other, last]
        .into_iter()
        .zip(1u8..)
        .map(|(id, n)| {
            let mut bytes = [0x10 * n; 16];
            bytes[15] = id.route();
            (id, bytes)
        })
        .collect();
    let mut records = Vec::new();
    for (clock, mut payload) in segment_records(&file) {
        for (id, bytes) in &fixed {
            replace_all(&mut payload, id.as_bytes(), bytes);
        }
        records.push((clock, payload));
    }
    records
}

/// The records of a segment the store wrote (checked by the store's own
/// recovery when it wrote them; here only split), with their batch's time.
fn segment_records(file: &[u8]) -> Vec<(Millis, Vec<u8>)> {
    let u32_at = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().expect("4 bytes"));
    let mut records = Vec::new();
    let mut at = 32;
    while at < file.len() {
        let body_len = u32_at(at) as usize;
        let clock = u64::from_le_bytes(file[at + 8..at + 16].try_into().expect("8 bytes"));
        let end = at + 24 + body_len;
        at += 24;
        while at < end {
            let len = u32_at(at) as usize;
            records.push((clock, file[at + 8..at + 8 + len].to_vec()));
            at += 8 + len;
        }
    }
    records
}

/// Replaces every occurrence of `from` in `bytes` by `to` (same length).
fn replace_all(bytes: &mut [u8], from: &[u8; 16], to: &[u8; 16]) {
    let mut at = 0;
    while at + 16 <= bytes.len() {
        if bytes[at..at + 16] == from[..] {
            bytes[at..at + 16].copy_from_slice(to);
            at += 16;
        } else {
            at += 1;
        }
    }
}

/// One valid message of each request, and some that break a rule.
fn requests() -> Vec<(&'static str, Vec<u8>)> {
    let duration = |seconds| prost_types::Duration { seconds, nanos: 0 };
    // Labels are a map, which encodes in hash order: each label goes in a
    // message of its own, and protobuf merges concatenated messages, so the
    // bytes are the same on every run.
    let with_labels = |request: pb::MintRequest, labels: &[(&str, &str)]| {
        let mut bytes = request.encode_to_vec();
        for (key, value) in labels {
            let label = pb::MintRequest {
                labels: HashMap::from([(key.to_string(), value.to_string())]),
                ..Default::default()
            };
            bytes.extend(label.encode_to_vec());
        }
        bytes
    };
    let mint = with_labels(
        pb::MintRequest {
            thread_id: "thread-1".into(),
            provider_instance_id: "claude-adapter-1".into(),
            provider_kind: "claude".into(),
            idle_timeout: Some(duration(600)),
            max_lifetime: Some(duration(3600)),
            replace_previous: true,
            scopes: vec!["repo:read".into(), "repo:write".into()],
            labels: HashMap::new(),
        },
        &[("env", "dev"), ("team", "core")],
    );
    let hidden = with_labels(
        pb::MintRequest {
            thread_id: "thread\u{202E}1".into(),
            provider_instance_id: "i\u{200B}".into(),
            scopes: vec![String::new(), "a\u{7}".into()],
            idle_timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: -1,
            }),
            ..Default::default()
        },
        &[("Bad Key", "v"), ("k", "\u{FEFF}")],
    );
    let touch = |target| pb::TouchRequest {
        target: Some(target),
    };
    use pb::touch_request::Target;
    let credential_id = "cred_000102030405060708090a0b0c0d0e0f".to_owned();
    vec![
        ("mint", mint),
        ("mint-hidden-characters", hidden),
        (
            "resolve",
            pb::ResolveRequest {
                token: token(1),
                required_scope: "repo:read".into(),
            }
            .encode_to_vec(),
        ),
        (
            "resolve-caller-key",
            pb::ResolveRequest {
                token: caller_key(2),
                required_scope: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            "revoke-thread",
            pb::RevokeThreadRequest {
                thread_id: "thread-1".into(),
            }
            .encode_to_vec(),
        ),
        (
            "revoke-all",
            pb::RevokeAllRequest {
                provider_instance_id: "claude-adapter-1".into(),
            }
            .encode_to_vec(),
        ),
        (
            "revoke-credential",
            pb::RevokeCredentialRequest {
                credential_id: credential_id.clone(),
            }
            .encode_to_vec(),
        ),
        (
            "touch-credential",
            touch(Target::CredentialId(credential_id)).encode_to_vec(),
        ),
        (
            "touch-thread",
            touch(Target::ThreadId("thread-1".into())).encode_to_vec(),
        ),
    ]
}

/// A valid callers file, and the refusals that must not echo a secret.
fn callers_files() -> Vec<(&'static str, String)> {
    let digest = KeyDigest::of(&caller_key(2)).to_hex();
    let other = KeyDigest::of(&caller_key(3)).to_hex();
    let key = caller_key(2);
    vec![
        (
            "valid",
            format!(
                "# callers\n\
                 [[caller]]\n\
                 name = \"claude-adapter\"\n\
                 roles = [\"mint\"]\n\
                 uri_sans = [\"spiffe://example.org/claude\"]\n\
                 dns_sans = [\"Claude-Adapter.internal\"]\n\
                 [[caller.key]]\n\
                 id = \"key-3f9a1c2e\"\n\
                 sha256 = \"{digest}\"\n\
                 [[caller.key]]\n\
                 id = \"key-next\"\n\
                 sha256 = \"{other}\"\n\
                 \n\
                 [[caller]]\n\
                 name = \"mcp-host\"\n\
                 roles = [\"resolve\", \"admin\"]\n\
                 key = [{{ id = \"host-1\", sha256 = \"{}\" }}]\n",
                KeyDigest::of(&caller_key(4)).to_hex()
            ),
        ),
        (
            "key-as-name",
            format!("[[caller]]\nname = \"{key}\"\nroles = [\"mint\"]\n"),
        ),
        (
            "digest-as-key-id",
            format!(
                "[[caller]]\nname = \"a\"\nroles = [\"mint\"]\n[[caller.key]]\nid = \"{digest}\"\nsha256 = \"{digest}\"\n"
            ),
        ),
        (
            "digest-as-role",
            format!("[[caller]]\nname = \"a\"\nroles = [\"{digest}\"]\n"),
        ),
        (
            "bad-digest",
            format!(
                "[[caller]]\nname = \"a\"\nroles = [\"mint\"]\n[[caller.key]]\nid = \"k\"\nsha256 = \"{}\"\n",
                digest.to_uppercase()
            ),
        ),
        (
            "syntax-error-after-digest",
            format!("[[caller]]\nname = \"a\"\nsha256 = \"{digest}\" {key}\n"),
        ),
        (
            "unknown-field",
            format!("[[caller]]\nname = \"a\"\nrole = [\"{key}\"]\n"),
        ),
        (
            "duplicate-digest",
            format!(
                "[[caller]]\nname = \"a\"\nroles = [\"mint\"]\nkey = [{{ id = \"k1\", sha256 = \"{digest}\" }}, {{ id = \"k2\", sha256 = \"{digest}\" }}]\n"
            ),
        ),
    ]
}
