//! The seed corpora: a few meaningful inputs per target, made by code so
//! they follow the formats as they change, and committed as
//! `fuzz/corpus/<target>/seed-<name>` (`tests/fuzz_corpus.rs` checks that
//! the committed files are these and rewrites them on request).

use std::collections::HashMap;

use prost::Message as _;

use crate::auth::key::KeyDigest;
use crate::pb;
use crate::token::{SecretFormat, CALLER_KEY_PREFIX, TOKEN_PREFIX};

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
    seeds
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
