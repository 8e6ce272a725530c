//! Helpers for the restart tests (`tests/store_restart.rs`): a scratch
//! directory that several servers use one after another, a server started
//! with a custom command (resource limits), a start that must be refused,
//! and the journal's files and batches as the tests damage them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use credential_authority::pb;
use tonic::transport::Channel;
use tonic::Status;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::{collect_into, find_listen_addr, serve_command, Server};

/// Listen on loopback, an ephemeral port.
pub const LOOPBACK: &[&str] = &["--listen", "127.0.0.1:0"];

/// The health entry of the store's writes.
pub const STORE_WRITES: &str = "credential_authority.v1.CredentialAuthority/store-writes";

/// How long a start, a refusal or a health change may take.
const PATIENCE: Duration = Duration::from_secs(20);

/// A scratch directory for a server's state (the server creates `state`
/// and its `store`).
pub fn scratch() -> Arc<tempfile::TempDir> {
    Arc::new(tempfile::tempdir().expect("a scratch directory"))
}

/// The data directory of the servers that use `scratch`.
pub fn data_dir(scratch: &tempfile::TempDir) -> PathBuf {
    scratch.path().join("state").join("store")
}

impl Server {
    /// Starts a server on `scratch` (see [`scratch`]) and waits until its
    /// store is open ("store recovered" logged).
    pub fn start_on(scratch: Arc<tempfile::TempDir>, flags: &[&str]) -> Server {
        Server::start_on_with(scratch, flags, |_| {})
    }

    /// Like [`Server::start_on`], with `configure` applied to the command
    /// before it is spawned (a `pre_exec`, say).
    pub fn start_on_with(
        scratch: Arc<tempfile::TempDir>,
        flags: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Server {
        let state_dir = scratch.path().join("state");
        let mut command = serve_command(LOOPBACK, &state_dir, flags);
        command.env("RUST_BACKTRACE", "0");
        configure(&mut command);
        let mut child = command.spawn().expect("the server binary starts");
        let log = Arc::new(Mutex::new(String::new()));
        collect_into(child.stdout.take().unwrap(), log.clone());
        collect_into(child.stderr.take().unwrap(), log.clone());
        let deadline = Instant::now() + PATIENCE;
        // The server logs its address before it opens the store: wait for
        // both, so that a refusal to open shows here and not as a failed call.
        let addr = loop {
            let text = log.lock().unwrap().clone();
            if let Some(addr) = find_listen_addr(&text).filter(|_| text.contains("store recovered"))
            {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "server exited early with {status}:\n{}",
                    log.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "server did not open its store:\n{}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let admin_key = std::fs::read_to_string(state_dir.join("admin.key"))
            .ok()
            .map(|key| key.trim().to_owned());
        Server {
            child,
            addr,
            log,
            state: scratch,
            admin_key,
        }
    }

    /// SIGKILL, then waits (bounded) for the exit: a crash.
    pub fn crash(&mut self) {
        self.signal(libc::SIGKILL);
        let status = self.wait();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "{status}"
        );
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    pub fn stop_cleanly(&mut self) {
        let status = self.terminate();
        assert_eq!(status.code(), Some(0), "{}", self.log());
        let log = self.log();
        assert!(log.contains("store closed"), "{log}");
    }
}

/// Starts a server on `scratch` that must refuse to start: returns its exit
/// status and everything it wrote. Panics if it opens its store instead.
pub fn refused_start(scratch: &tempfile::TempDir, flags: &[&str]) -> (ExitStatus, String) {
    let mut child = serve_command(LOOPBACK, &scratch.path().join("state"), flags)
        .env("RUST_BACKTRACE", "0")
        .spawn()
        .expect("the server binary starts");
    let log = Arc::new(Mutex::new(String::new()));
    collect_into(child.stdout.take().unwrap(), log.clone());
    collect_into(child.stderr.take().unwrap(), log.clone());
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            std::thread::sleep(Duration::from_millis(100));
            let text = log.lock().unwrap().clone();
            return (status, text);
        }
        if log.lock().unwrap().contains("store recovered") || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server was to refuse to start but did not:\n{}",
                log.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The journal's segment files in `dir`, oldest first.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("the data directory lists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("journal-") && n.ends_with(".log"))
        })
        .collect();
    segments.sort();
    segments
}

/// The newest segment in `dir`.
pub fn newest_segment(dir: &Path) -> PathBuf {
    segments(dir)
        .pop()
        .unwrap_or_else(|| panic!("no segment in {}", dir.display()))
}

/// Length of a segment's file header (src/store/journal/frame.rs).
pub const FILE_HEADER_LEN: usize = 32;
/// Length of a batch header: body length, record count, clock, two CRCs.
pub const BATCH_HEADER_LEN: usize = 24;

/// Where one batch lies in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSpan {
    /// Offset of its header.
    pub offset: usize,
    /// Header and body.
    pub len: usize,
    /// Records in it.
    pub count: u32,
}

/// The batches of a segment's bytes, read by their length fields only (no
/// checksum is checked: the bytes are the server's own, undamaged).
pub fn batches(bytes: &[u8]) -> Vec<BatchSpan> {
    let mut spans = Vec::new();
    let mut at = FILE_HEADER_LEN;
    while at + BATCH_HEADER_LEN <= bytes.len() {
        let body = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let count = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        let len = BATCH_HEADER_LEN + body;
        assert!(at + len <= bytes.len(), "a batch runs past the end");
        spans.push(BatchSpan {
            offset: at,
            len,
            count,
        });
        at += len;
    }
    assert_eq!(at, bytes.len(), "the segment ends inside a batch header");
    spans
}

/// The `key=value` fields of the first log line holding `message`.
pub fn log_fields(log: &str, message: &str) -> HashMap<String, String> {
    let line = log
        .lines()
        .find(|line| line.contains(message))
        .unwrap_or_else(|| panic!("no {message:?} in the log:\n{log}"));
    line.split_whitespace()
        .filter_map(|word| word.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

/// A health client on its own connection.
pub async fn health(server: &Server) -> HealthClient<Channel> {
    super::health::health(server).await
}

/// Waits (bounded) until the health entry of the store's writes reads
/// `status`, by Health/Watch (which sends the status now, then each change).
pub async fn await_store_writes(health: &mut HealthClient<Channel>, status: ServingStatus) {
    let mut watch = health
        .watch(HealthCheckRequest {
            service: STORE_WRITES.into(),
        })
        .await
        .expect("the store-writes health entry answers")
        .into_inner();
    let mut seen = Vec::new();
    let waited = tokio::time::timeout(PATIENCE, async {
        while let Some(message) = watch.message().await.expect("the watch goes on") {
            seen.push(message.status());
            if message.status() == status {
                return;
            }
        }
        panic!("the watch ended");
    })
    .await;
    assert!(
        waited.is_ok(),
        "store-writes health never read {status:?}: {seen:?}"
    );
}

/// A Touch of one credential by its id.
pub async fn touch(
    client: &mut super::Client,
    credential_id: &str,
) -> Result<pb::TouchResponse, Status> {
    client
        .touch(super::callers::touch_id(credential_id))
        .await
        .map(tonic::Response::into_inner)
}
