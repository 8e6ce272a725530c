//! Starts the real server binary on an ephemeral loopback port and reads its
//! log, for the integration tests. Each server gets its own state directory,
//! so it starts secure by default as a new user's would: it writes an admin
//! key on first start, and the helpers here present it.
#![allow(dead_code, unreachable_pub)]

pub mod audit;
pub mod callers;
pub mod grpcurl;
pub mod h2raw;
pub mod health;
pub mod redis;
pub mod restart;
pub mod tls;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use credential_authority::pb::credential_authority_client::CredentialAuthorityClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// The server binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_credential-authority");

/// A client of the authority that presents a caller key (or none).
pub type Client = CredentialAuthorityClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <key>` to every call, when it has a key.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// Presents `key`, or nothing.
    pub fn new(key: Option<&str>) -> Self {
        Bearer(key.map(|key| format!("Bearer {key}").parse().expect("ascii key")))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A client presenting the server's admin key.
pub async fn client(server: &Server) -> Client {
    client_with(server, Some(server.admin_key())).await
}

/// A client presenting `key` (or no key).
pub async fn client_with(server: &Server, key: Option<&str>) -> Client {
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .expect("connects");
    CredentialAuthorityClient::with_interceptor(channel, Bearer::new(key))
}

/// How long the server may take to start or to stop.
const PATIENCE: Duration = Duration::from_secs(20);

/// A running `credential-authority serve`, killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    state: Arc<tempfile::TempDir>,
    admin_key: Option<String>,
}

impl Server {
    /// Starts the server with extra flags, on 127.0.0.1 port 0.
    pub fn start(flags: &[&str]) -> Server {
        Server::start_with_env(flags, &[])
    }

    /// Starts the server with extra flags and environment variables.
    pub fn start_with_env(flags: &[&str], env: &[(&str, &str)]) -> Server {
        let state = Arc::new(tempfile::tempdir().expect("a state directory"));
        Server::start_in(state, &["--listen", "127.0.0.1:0"], flags, env)
    }

    /// Starts the server with its state in `state` (so a second server can
    /// reuse the first one's), listening as `listen` says.
    pub fn start_in(
        state: Arc<tempfile::TempDir>,
        listen: &[&str],
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let state_dir = state.path().join("state");
        let mut child = serve_command(listen, &state_dir, flags)
            .envs(env.iter().copied())
            .spawn()
            .expect("the server binary starts");
        let log = Arc::new(Mutex::new(String::new()));
        collect_into(child.stdout.take().unwrap(), log.clone());
        collect_into(child.stderr.take().unwrap(), log.clone());
        let deadline = Instant::now() + PATIENCE;
        let addr = loop {
            if let Some(addr) = find_listen_addr(&log.lock().unwrap()) {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "server exited early with {status}:\n{}",
                    log.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "server did not report its address:\n{}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // Written before the server listens, on its first start only.
        let admin_key = std::fs::read_to_string(state_dir.join("admin.key"))
            .ok()
            .map(|key| key.trim().to_owned());
        Server {
            child,
            addr,
            log,
            state,
            admin_key,
        }
    }

    /// The admin key the server wrote on its first start.
    pub fn admin_key(&self) -> &str {
        self.admin_key
            .as_deref()
            .expect("the server wrote an admin key (started without --callers)")
    }

    /// The scratch directory this server's state lives in (kept while any
    /// server uses it).
    pub fn scratch(&self) -> Arc<tempfile::TempDir> {
        self.state.clone()
    }

    /// The server's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.state.path().join("state")
    }

    /// Adds a caller with `roles` to the server's callers file with the real
    /// `callers add` command, has the server reload it (SIGHUP), and returns
    /// the new key.
    pub fn add_caller(&self, name: &str, roles: &str) -> String {
        let output = Command::new(BINARY)
            .args(["callers", "add", name, "--roles", roles, "--state-dir"])
            .arg(self.state_dir())
            .output()
            .expect("callers add runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "callers add failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let key = find_key(&stdout).expect("callers add printed the key");
        self.reload();
        key
    }

    /// Sends SIGHUP and waits until the server logged the reload.
    pub fn reload(&self) {
        let before = self.log().matches("callers reloaded").count()
            + self.log().matches("callers file refused").count();
        self.signal(libc::SIGHUP);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let log = self.log();
            let after = log.matches("callers reloaded").count()
                + log.matches("callers file refused").count();
            if after > before {
                return;
            }
            assert!(Instant::now() < deadline, "no reload logged:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL for tonic clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything the server wrote so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The process id, for signals.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait()
    }

    /// Sends a signal.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits (bounded) for the exit.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads drain the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) until the log holds `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "log never showed {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first caller key (`mcpck_` + 49 characters) in `text`.
pub fn find_key(text: &str) -> Option<String> {
    let start = text.find("mcpck_")?;
    let key: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    (key.len() == 55).then_some(key)
}

/// `credential-authority serve` on `listen` with its state in `state_dir`,
/// logging at info, its output piped for [`collect_into`].
pub fn serve_command(listen: &[&str], state_dir: &Path, flags: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .arg("serve")
        .args(listen)
        .arg("--state-dir")
        .arg(state_dir)
        .args(flags)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Appends the lines of `stream` to `sink` as they come, on a thread of its
/// own, until the stream ends.
pub fn collect_into(stream: impl std::io::Read + Send + 'static, sink: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut sink = sink.lock().unwrap();
            sink.push_str(&line);
            sink.push('\n');
        }
    });
}

/// The address from the `listening` line, in text or JSON format.
pub fn find_listen_addr(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|line| line.contains("listening"))
        .find_map(|line| {
            let start = line
                .find("addr=")
                .map(|i| i + 5)
                .or_else(|| line.find("\"addr\":\"").map(|i| i + 8))?;
            let rest = &line[start..];
            let end = rest.find([' ', '"']).unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
}
