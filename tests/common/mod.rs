//! Starts the real server binary on an ephemeral loopback port and reads its
//! log, for the integration tests.
#![allow(dead_code, unreachable_pub)]

pub mod grpcurl;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the server may take to start or to stop.
const PATIENCE: Duration = Duration::from_secs(20);

/// A running `credential-authority serve`, killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the server with extra flags, on 127.0.0.1 port 0.
    pub fn start(flags: &[&str]) -> Server {
        Server::start_with_env(flags, &[])
    }

    /// Starts the server with extra flags and environment variables.
    pub fn start_with_env(flags: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_credential-authority"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(flags)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the server binary starts");
        let log = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
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
        Server { child, addr, log }
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

/// The address from the `listening` line, in text or JSON format.
fn find_listen_addr(log: &str) -> Option<SocketAddr> {
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
