//! Real `redis-server` processes for the Redis backend's tests, each on its
//! own loopback port and directory, killed when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    /// Its loopback port.
    pub port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl RedisServer {
    /// Starts one with `noeviction` (as the authority requires), no
    /// snapshots, and `extra` arguments (`--appendonly yes`, ...).
    pub fn start(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir,
            args: extra.iter().map(|s| s.to_string()).collect(),
        };
        // A port picked by the kernel may be taken again before Redis binds
        // it: try a few.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start");
    }

    /// A replica of `primary`, once it has synced.
    pub fn replica_of(primary: &RedisServer) -> RedisServer {
        let port = primary.port.to_string();
        let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &port]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
        {
            assert!(Instant::now() < deadline, "the replica never synced");
            std::thread::sleep(Duration::from_millis(50));
        }
        replica
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its working directory (the append-only file lives here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `redis-cli` against it; returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// How many times a command ran, from `INFO commandstats` (e.g.
    /// `fcall`).
    pub fn command_calls(&self, command: &str) -> u64 {
        let needle = format!("cmdstat_{command}:calls=");
        self.cli(&["INFO", "commandstats"])
            .lines()
            .find_map(|line| line.strip_prefix(&needle))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// The commands clients sent (not those functions ran) while `during`
    /// ran, as `MONITOR` shows them: one line per command, uppercased name
    /// first.
    pub fn client_commands_during(&self, during: impl FnOnce()) -> Vec<String> {
        use std::io::{BufRead as _, BufReader};
        let mut monitor = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("MONITOR")
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-cli runs");
        let mut lines = BufReader::new(monitor.stdout.take().unwrap()).lines();
        assert_eq!(
            lines.next().unwrap().unwrap().trim(),
            "OK",
            "MONITOR started"
        );
        during();
        // A marker, so everything before it has been read.
        self.cli(&["ECHO", "monitor-end"]);
        let mut seen = Vec::new();
        for line in lines {
            let line = line.unwrap();
            if line.contains("\"monitor-end\"") {
                break;
            }
            // `<time> [<db> <client>] "CMD" "arg"...`; a function's own
            // commands show as `[<db> lua]`.
            if line.contains(" lua] ") {
                continue;
            }
            if let Some(command) = line.split("] \"").nth(1) {
                seen.push(command.split('"').next().unwrap_or("").to_uppercase());
            }
        }
        let _ = monitor.kill();
        let _ = monitor.wait();
        seen
    }

    /// Kills it (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(Instant::now() < deadline, "redis-server did not restart");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Spawns the process and waits until it answers; false if it exited.
    fn spawn(&mut self) -> bool {
        let mut child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .arg("--maxmemory-policy")
            .arg("noeviction")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/install-test-tools)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            let answer = self.cli(&["PING"]);
            // With --requirepass, a PING without the password is refused:
            // that is an answer too.
            if answer.trim() == "PONG" || answer.contains("NOAUTH") {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A loopback port nothing listens on at the moment.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The append-only file's directory, for tests that look at it.
pub fn appendonly_dir(server: &RedisServer) -> PathBuf {
    server.dir().join("appendonlydir")
}
