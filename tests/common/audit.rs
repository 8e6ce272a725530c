//! Audit-trail helpers: read an audit file as JSON lines, follow it line by
//! line, wait (bounded) for the server to reopen it after SIGHUP, find a
//! caller's key id, assert that no secret reached a text, and start a server
//! whose stdout and stderr are kept apart (for the stdout sink).

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use credential_authority::pb::credential_authority_client::CredentialAuthorityClient;
use serde_json::Value;
use tonic::transport::Channel;

use super::{collect_into, find_listen_addr, serve_command, Bearer, Client, Server, BINARY};

/// How long a bounded wait lasts at most.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The environment under which the server logs the reopen of its audit file
/// (an info line), so a test can wait for it instead of guessing.
pub const REOPEN_LOGGED: &[(&str, &str)] = &[("RUST_LOG", "info")];

/// The log line `main` writes for each SIGHUP it received.
const SIGHUP_LOGGED: &str = "reloading signal=";

/// Log lines written once the audit file was (or could not be) reopened.
const REOPENED: [&str; 2] = ["audit trail reopened", "audit trail could not be reopened"];

/// Starts a server with `flags` that logs its audit reopens.
pub fn start(flags: &[&str]) -> Server {
    Server::start_with_env(flags, REOPEN_LOGGED)
}

/// A tonic request carrying `x-request-id: id`.
pub fn with_id<T>(message: T, id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().expect("an ascii request id"));
    request
}

/// The text of an audit file; empty if it does not exist.
pub fn read(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    }
}

/// The lines of an audit text, each checked to be one complete JSON object
/// (the text ends with a newline: no half-written line).
pub fn parse_lines(text: &str) -> Vec<Value> {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the audit trail ends in the middle of a line: {text:?}"
    );
    text.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {line:?}"));
            assert!(value.is_object(), "audit line is not an object: {line}");
            value
        })
        .collect()
}

/// The lines of an audit file.
pub fn lines(path: &Path) -> Vec<Value> {
    parse_lines(&read(path))
}

/// The request ids of an audit file's lines, in order.
pub fn request_ids(path: &Path) -> Vec<String> {
    lines(path)
        .iter()
        .map(|line| line["request_id"].as_str().expect("request_id").to_owned())
        .collect()
}

/// The field names of a line, sorted.
pub fn fields(line: &Value) -> Vec<String> {
    let mut keys: Vec<String> = line.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

/// Follows an audit file: each check sees only the lines written since the
/// previous one, read at once (no waiting: a line is due before the reply).
pub struct Trail {
    pub path: PathBuf,
    seen: usize,
}

impl Trail {
    /// Follows `path` from its current end.
    pub fn new(path: &Path) -> Trail {
        Trail {
            path: path.to_owned(),
            seen: lines(path).len(),
        }
    }

    /// The lines written since the last check.
    pub fn new_lines(&mut self) -> Vec<Value> {
        let all = lines(&self.path);
        assert!(all.len() >= self.seen, "the audit file shrank");
        let fresh = all[self.seen..].to_vec();
        self.seen = all.len();
        fresh
    }

    /// Asserts that exactly one line was written since the last check, for
    /// request `id`, and returns it.
    pub fn one(&mut self, id: &str) -> Value {
        let fresh = self.new_lines();
        assert_eq!(
            fresh.len(),
            1,
            "exactly one audit line for {id}, read right after the reply: {fresh:#?}"
        );
        let line = fresh.into_iter().next().unwrap();
        assert_eq!(line["request_id"], id, "{line}");
        line
    }

    /// Asserts that nothing was written since the last check.
    pub fn none(&mut self, what: &str) {
        let fresh = self.new_lines();
        assert!(fresh.is_empty(), "{what} wrote audit lines: {fresh:#?}");
    }
}

/// Asserts that no 12-character window of any of `secrets` occurs in
/// `text`. Only the window is printed on failure, never a whole secret.
pub fn assert_no_secret(text: &str, secrets: &[&str]) {
    for (n, secret) in secrets.iter().enumerate() {
        assert!(
            secret.len() >= 12,
            "secret #{n} is shorter than the 12-character window"
        );
        for window in secret.as_bytes().windows(12) {
            let window = std::str::from_utf8(window).expect("ascii secrets");
            assert!(
                !text.contains(window),
                "{window:?}, a piece of secret #{n}, appears in the text"
            );
        }
    }
}

/// The id of the newest key of caller `name`, from the server's callers
/// file (the id `callers add` printed).
pub fn key_id(server: &Server, name: &str) -> String {
    let text = std::fs::read_to_string(server.state_dir().join("callers.toml"))
        .expect("read the callers file");
    let file: toml::Table = text.parse().expect("the callers file is TOML");
    let caller = file["caller"]
        .as_array()
        .expect("[[caller]] entries")
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no caller {name}"));
    caller["key"]
        .as_array()
        .and_then(|keys| keys.last())
        .and_then(|key| key["id"].as_str())
        .expect("the caller has a key")
        .to_owned()
}

/// A well-formed caller key that `server` does not know: added to a callers
/// file of another state directory.
pub fn foreign_key(server: &Server) -> String {
    let elsewhere = server.scratch().path().join("elsewhere");
    let output = Command::new(BINARY)
        .args(["callers", "add", "ghost", "--roles", "admin", "--state-dir"])
        .arg(&elsewhere)
        .output()
        .expect("callers add runs");
    assert!(output.status.success(), "callers add failed");
    super::find_key(&String::from_utf8_lossy(&output.stdout)).expect("a key was printed")
}

fn count(log: &str, needles: &[&str]) -> usize {
    needles.iter().map(|n| log.matches(n).count()).sum()
}

/// Waits (bounded) until the server has reopened its audit file once for
/// every SIGHUP it logged: `Server::add_caller` reloads, and the reopen
/// comes after the callers file in the reload, so a test that moves the
/// audit file must first let that reopen happen. Needs [`REOPEN_LOGGED`].
pub fn settle(server: &Server) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let log = server.log();
        if count(&log, &REOPENED) >= count(&log, &[SIGHUP_LOGGED]) {
            return;
        }
        assert!(Instant::now() < deadline, "no audit reopen logged:\n{log}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIGHUP and waits (bounded) until the server has reopened its audit
/// file (or logged why it could not). Needs [`REOPEN_LOGGED`].
pub fn hup(server: &Server) {
    settle(server);
    let before = count(&server.log(), &[SIGHUP_LOGGED]);
    server.signal(libc::SIGHUP);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let log = server.log();
        let hups = count(&log, &[SIGHUP_LOGGED]);
        if hups > before && count(&log, &REOPENED) >= hups {
            return;
        }
        assert!(Instant::now() < deadline, "no audit reopen logged:\n{log}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls (bounded) until `done` holds of the text `read` returns, and
/// returns that text.
pub fn poll(what: &str, mut read: impl FnMut() -> String, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = read();
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what} never happened:\n{text}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A server whose stdout and stderr are read apart (the common [`Server`]
/// merges them), to check what the stdout audit sink writes where.
pub struct SplitServer {
    child: Child,
    pub addr: SocketAddr,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    admin_key: String,
    _state: tempfile::TempDir,
}

impl SplitServer {
    /// Starts `serve` on 127.0.0.1 port 0 with `flags`.
    pub fn start(flags: &[&str]) -> SplitServer {
        let state = tempfile::tempdir().expect("a state directory");
        let state_dir = state.path().join("state");
        let mut child = serve_command(&["--listen", "127.0.0.1:0"], &state_dir, flags)
            .spawn()
            .expect("the server binary starts");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        let deadline = Instant::now() + PATIENCE;
        let addr = loop {
            if let Some(addr) = find_listen_addr(&stdout.lock().unwrap()) {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "server exited early with {status}:\n{}{}",
                    stdout.lock().unwrap(),
                    stderr.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "server did not report its address"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let admin_key = std::fs::read_to_string(state_dir.join("admin.key"))
            .expect("the first start wrote an admin key")
            .trim()
            .to_owned();
        SplitServer {
            child,
            addr,
            stdout,
            stderr,
            admin_key,
            _state: state,
        }
    }

    /// What the server wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The admin key of its first start.
    pub fn admin_key(&self) -> &str {
        &self.admin_key
    }

    /// A client presenting `key` (or none).
    pub async fn client(&self, key: Option<&str>) -> Client {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connects");
        CredentialAuthorityClient::with_interceptor(channel, Bearer::new(key))
    }
}

impl Drop for SplitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `stream` line by line into a shared string of its own.
fn collect(stream: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    collect_into(stream, text.clone());
    text
}
