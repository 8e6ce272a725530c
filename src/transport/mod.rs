//! The listeners the gRPC server accepts on: plain or TLS TCP and Unix
//! sockets, behind one [`Incoming`] stream, and the HTTP/2 connection loop
//! ([`http2`]) that serves it.
//!
//! Every connection carries a [`PeerInfo`] (tonic puts it in each request's
//! extensions), so a handler knows who is on the other end: the TCP peer
//! address, the Unix peer's uid and pid, and the URI and DNS names of a
//! verified client certificate. Clients are assumed hostile: nothing here
//! panics on what they send, a slow TLS client cannot stall accepting, and
//! accept errors back off instead of spinning.

mod accept;
pub mod http2;
mod preface;
mod tls;
mod trim;
mod unix;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

pub(crate) use accept::{accept_failed, accept_succeeded, Admission, Admitted, Backoff, Io};
pub use accept::{ClientSan, Connection, CounterSnapshot, Counters, Peer, PeerInfo};
pub use tls::TlsReloader;
pub use unix::SocketCleanup;

/// How many accepted connections may wait for tonic before accepting pauses.
const QUEUE: usize = 128;

/// Where to listen, as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// A TCP address; port 0 asks the kernel for a free port.
    Tcp(SocketAddr),
    /// A Unix socket at this absolute path; its directory must be private.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    /// [`TransportError::ListenAddr`], whose message shows both forms.
    type Err = TransportError;

    /// Parses `unix:/absolute/path` or an `IP:PORT` socket address, so one
    /// flag can name either kind.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || TransportError::ListenAddr {
            input: s.to_owned(),
        };
        match s.strip_prefix("unix:") {
            Some(path) => {
                let path = PathBuf::from(path);
                if path.is_absolute() && path.parent().is_some() {
                    Ok(ListenAddr::Unix(path))
                } else {
                    Err(invalid())
                }
            }
            None => s.parse().map(ListenAddr::Tcp).map_err(|_| invalid()),
        }
    }
}

impl fmt::Display for ListenAddr {
    /// Prints the form [`FromStr`] reads, so logs can be pasted back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// What the exposure rules ask of an address.
impl ListenAddr {
    /// Whether only this machine can reach the address (loopback TCP or a
    /// Unix socket), so the caller can refuse plaintext anywhere else.
    pub fn is_local(&self) -> bool {
        match self {
            ListenAddr::Tcp(addr) => addr.ip().is_loopback(),
            ListenAddr::Unix(_) => true,
        }
    }
}

/// The PEM files of the server's TLS identity, re-read on every reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server certificate followed by its intermediates.
    pub cert_chain: PathBuf,
    /// The private key of the first certificate (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// CA certificates that client certificates must chain to; without it
    /// no client certificate is asked for. Clients may still connect
    /// without one and authenticate with a key at the gRPC layer.
    pub client_ca: Option<PathBuf>,
}

/// Everything [`Transport::bind`] needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportConfig {
    /// The addresses to listen on, all served by one [`Incoming`].
    pub listen: Vec<ListenAddr>,
    /// TLS for the TCP listeners; Unix sockets stay plaintext (the kernel
    /// already tells who the peer is).
    pub tls: Option<TlsFiles>,
    /// How long a client may take from accept to its first HTTP/2 SETTINGS
    /// frame: the TLS handshake, the client preface and SETTINGS together.
    pub handshake_timeout: Duration,
    /// How many connections may be open (or shaking hands) at once over
    /// all listeners; more are closed at accept.
    pub max_connections: usize,
    /// When set, Unix connections from any other uid are closed at once.
    pub unix_allowed_uids: Option<Vec<u32>>,
}

/// What one listener ended up bound to, for logs and for tests that asked
/// for port 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundListener {
    /// The address, with the real port when 0 was asked.
    pub addr: ListenAddr,
    /// Whether connections are TLS.
    pub tls: bool,
    /// Whether client certificates are asked for (and verified).
    pub client_certificates: bool,
}

/// Why the transport could not start or reload; each message names the
/// address or file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A listen address is neither form.
    #[error("invalid listen address '{input}': use 'unix:/absolute/path' for a Unix socket or IP:PORT for TCP, such as 127.0.0.1:50051 or [::1]:50051")]
    ListenAddr {
        /// What was given.
        input: String,
    },
    /// Nothing to listen on.
    #[error("no listen address given: name at least one, such as 127.0.0.1:50051 or unix:/run/credential-authority/sock")]
    NoListenAddr,
    /// The same address twice.
    #[error("listen address {addr} is given twice: name each address once")]
    DuplicateListenAddr {
        /// The repeated address.
        addr: ListenAddr,
    },
    /// A zero handshake timeout would fail every TLS handshake.
    #[error("the handshake timeout must be above zero, such as 10s")]
    ZeroHandshakeTimeout,
    /// A connection cap of zero would refuse every connection.
    #[error("--max-connections must be at least 1, such as 1024")]
    ZeroMaxConnections,
    /// The OS refused the listener.
    #[error("cannot listen on {addr}: {source}; check that no other process uses it and that the address belongs to this machine")]
    Bind {
        /// The address.
        addr: ListenAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A certificate file could not be read or parsed.
    #[error("cannot read certificates from {}: {reason}; it must be a readable PEM file with one or more CERTIFICATE blocks", path.display())]
    Certificates {
        /// The file.
        path: PathBuf,
        /// What was wrong, without the file's contents.
        reason: String,
    },
    /// The private key file could not be read or parsed.
    #[error("cannot read the private key from {}: {reason}; it must be a readable PEM file with a PKCS#8, PKCS#1 or SEC1 private key", path.display())]
    PrivateKey {
        /// The file.
        path: PathBuf,
        /// What was wrong, without the file's contents.
        reason: String,
    },
    /// The client CA file holds no usable trust anchor.
    #[error("cannot use {} as the client CA: {reason}; it must hold the PEM CA certificates that client certificates are issued by", path.display())]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the certificate and key.
    #[error("the certificate in {} and the key in {} do not form a usable TLS identity: {source}; check that the key belongs to the first certificate", cert_chain.display(), private_key.display())]
    TlsIdentity {
        /// The certificate chain file.
        cert_chain: PathBuf,
        /// The key file.
        private_key: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// A Unix socket path must be absolute and have a directory.
    #[error("Unix socket path {} must be absolute, such as /run/credential-authority/sock", path.display())]
    UnixPath {
        /// The path.
        path: PathBuf,
    },
    /// The socket's directory could not be inspected or created.
    #[error("cannot prepare the socket directory {}: {source}; create it with `mkdir -m 700 {}`", dir.display(), dir.display())]
    UnixDir {
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The socket's directory is not private to this server's uid.
    #[error("refusing to listen in {}: {problem}; it must belong to this server's user (uid {euid}) and be closed to everyone else: run `chmod 700 {}` (and chown it to uid {euid} if needed), or choose another directory", dir.display(), dir.display())]
    UnixDirInsecure {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// This process's effective uid.
        euid: u32,
    },
    /// Something that is not a socket sits at the socket path.
    #[error("{} exists and is not a socket; it is left alone: remove it yourself or choose another path", path.display())]
    UnixNotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A live server owns the socket.
    #[error("another server is listening on {}; stop it or choose another path", path.display())]
    UnixInUse {
        /// The path.
        path: PathBuf,
    },
    /// An old socket could not be probed or removed.
    #[error("cannot clear the old socket {}: {source}; remove it yourself if no server uses it", path.display())]
    UnixStale {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// A bound listener waiting for [`Transport::into_incoming`], with the
/// address it reports: kept apart from the listener so [`Transport::bound`]
/// needs no system call and cannot fail.
enum Listener {
    /// A TCP listener; TLS, if any, is added per connection at accept time.
    Tcp {
        /// The socket.
        listener: TcpListener,
        /// Where it is bound, with the kernel's port when 0 was asked.
        addr: SocketAddr,
    },
    /// A Unix socket listener.
    Unix {
        /// The socket.
        listener: UnixListener,
        /// The socket file's path, as configured.
        path: PathBuf,
    },
}

/// Bound listeners, not yet accepting; [`Transport::into_incoming`] starts
/// them. Dropping it closes them and removes the Unix socket files.
#[derive(Debug)]
pub struct Transport {
    /// In the configured order, so [`Transport::bound`] reports them so.
    listeners: Vec<Listener>,
    /// Loaded at bind, so a bad certificate fails the start, not the first
    /// handshake.
    tls: Option<TlsReloader>,
    /// The connection cap and handshake timeout, shared by every accept
    /// task.
    admission: Admission,
    /// Shared by every Unix accept task; `None` lets any uid in.
    allowed_uids: Option<Arc<[u32]>>,
    /// Held from bind on, so a failed start removes the sockets it made.
    cleanup: SocketCleanup,
    /// Created here, so a handle taken before
    /// [`Transport::into_incoming`] sees every accept task's counts.
    counters: Counters,
}

impl fmt::Debug for Listener {
    /// The address only: the sockets' own `Debug` shows descriptors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listener::Tcp { addr, .. } => write!(f, "Tcp({addr})"),
            Listener::Unix { path, .. } => write!(f, "Unix({})", path.display()),
        }
    }
}

/// Binding is separate from accepting, so every bind and file error shows
/// before the server reports itself started.
impl Transport {
    /// Loads the TLS files and binds every address, so that every problem
    /// shows at startup. On error nothing stays bound.
    pub async fn bind(config: TransportConfig) -> Result<Transport, TransportError> {
        if config.listen.is_empty() {
            return Err(TransportError::NoListenAddr);
        }
        if config.handshake_timeout.is_zero() {
            return Err(TransportError::ZeroHandshakeTimeout);
        }
        if config.max_connections == 0 {
            return Err(TransportError::ZeroMaxConnections);
        }
        for (i, addr) in config.listen.iter().enumerate() {
            if config.listen[..i].contains(addr) {
                return Err(TransportError::DuplicateListenAddr { addr: addr.clone() });
            }
        }
        let tls = config.tls.map(TlsReloader::load).transpose()?;
        let mut sockets = unix::SocketFiles::default();
        let mut listeners = Vec::with_capacity(config.listen.len());
        for addr in config.listen {
            let bind_error = |source| TransportError::Bind {
                addr: addr.clone(),
                source,
            };
            match &addr {
                ListenAddr::Tcp(wanted) => {
                    let listener = TcpListener::bind(wanted).await.map_err(bind_error)?;
                    let addr = listener.local_addr().map_err(bind_error)?;
                    listeners.push(Listener::Tcp { listener, addr });
                }
                ListenAddr::Unix(path) => {
                    let listener = unix::bind(path, &mut sockets).await?;
                    listeners.push(Listener::Unix {
                        listener,
                        path: path.clone(),
                    });
                }
            }
        }
        Ok(Transport {
            listeners,
            tls,
            admission: Admission::new(config.max_connections, config.handshake_timeout),
            allowed_uids: config.unix_allowed_uids.map(Arc::from),
            cleanup: SocketCleanup::new(sockets),
            counters: Counters::default(),
        })
    }

    /// What each listener is bound to, in the configured order.
    pub fn bound(&self) -> Vec<BoundListener> {
        let client_certificates = self.tls.as_ref().is_some_and(TlsReloader::asks_client_cert);
        self.listeners
            .iter()
            .map(|l| match l {
                Listener::Tcp { addr, .. } => BoundListener {
                    addr: ListenAddr::Tcp(*addr),
                    tls: self.tls.is_some(),
                    client_certificates,
                },
                Listener::Unix { path, .. } => BoundListener {
                    addr: ListenAddr::Unix(path.clone()),
                    tls: false,
                    client_certificates: false,
                },
            })
            .collect()
    }

    /// A handle that re-reads the TLS files (on SIGHUP, say); `None` without
    /// TLS.
    pub fn tls_reloader(&self) -> Option<TlsReloader> {
        self.tls.clone()
    }

    /// The transport's counters; the handle stays valid after
    /// [`Transport::into_incoming`].
    pub fn counters(&self) -> Counters {
        self.counters.clone()
    }

    /// Starts one accept task per listener and returns the stream of their
    /// connections. Must be called inside a Tokio runtime.
    pub fn into_incoming(self) -> Incoming {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut tasks = Vec::with_capacity(self.listeners.len());
        for listener in self.listeners {
            let task = match listener {
                Listener::Tcp { listener, addr } => tokio::spawn(tls::accept(
                    listener,
                    addr,
                    self.tls.clone(),
                    self.admission.clone(),
                    tx.clone(),
                    self.counters.clone(),
                )),
                Listener::Unix { listener, path } => tokio::spawn(unix::accept(
                    listener,
                    ListenAddr::Unix(path),
                    self.allowed_uids.clone(),
                    self.admission.clone(),
                    tx.clone(),
                    self.counters.clone(),
                )),
            };
            tasks.push(task.abort_handle());
        }
        Incoming {
            rx,
            _tasks: AbortOnDrop(tasks),
            cleanup: self.cleanup,
            counters: self.counters,
            handshake_timeout: self.admission.handshake_timeout,
            open: self.admission.open,
        }
    }
}

/// The accept tasks of an [`Incoming`]: tokio tasks outlive their handles,
/// so without this dropping the stream would leave them accepting into a
/// closed channel, holding the listeners open.
struct AbortOnDrop(Vec<AbortHandle>);

impl Drop for AbortOnDrop {
    /// Aborts every task; each drops its listener, which closes it.
    fn drop(&mut self) {
        self.0.iter().for_each(AbortHandle::abort);
    }
}

/// The connections of every listener, for tonic's
/// `serve_with_incoming_shutdown`. Never yields an error: accept failures
/// are retried inside. Dropping it stops the accept tasks and closes the
/// listeners.
pub struct Incoming {
    // Field order is drop order: close the channel, stop the tasks, then
    // (if no clone remains) remove the socket files.
    /// What every accept task sends to; bounded ([`QUEUE`]), so accepting
    /// pauses while tonic is behind instead of piling up connections.
    rx: mpsc::Receiver<Connection>,
    /// Held only to be dropped with the stream.
    _tasks: AbortOnDrop,
    /// The socket files, removed once this and every clone are gone.
    cleanup: SocketCleanup,
    /// For the HTTP/2 phase's refusals, which the connection loop counts.
    counters: Counters,
    /// For the connection loop's log lines.
    handshake_timeout: Duration,
    /// Every open connection, for the connection loop's trim.
    open: Arc<trim::OpenConnections>,
}

impl fmt::Debug for Incoming {
    /// The socket files only: the channel and tasks have nothing to show.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("cleanup", &self.cleanup)
            .finish_non_exhaustive()
    }
}

/// What the server holds on to after handing the stream to tonic.
impl Incoming {
    /// A guard that keeps the Unix socket files until it, its clones and
    /// this stream are all gone; hold one until tonic has drained.
    pub fn socket_cleanup(&self) -> SocketCleanup {
        self.cleanup.clone()
    }

    /// The transport's counters, for the connection loop to add its own.
    pub fn counters(&self) -> Counters {
        self.counters.clone()
    }

    /// The configured handshake timeout (for log lines).
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// The open connections, whose fall after a burst asks for a trim.
    pub(crate) fn open_connections(&self) -> Arc<trim::OpenConnections> {
        self.open.clone()
    }
}

/// What tonic's `serve_with_incoming_shutdown` consumes.
impl tokio_stream::Stream for Incoming {
    /// Never an error (accept failures are retried inside); the `Result` is
    /// what tonic asks for.
    type Item = Result<Connection, io::Error>;

    /// Ends only once every accept and handshake task has dropped its
    /// sender; while this stream lives, none ends on its own.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

#[cfg(test)]
/// Shared with the TLS and Unix tests (`next_conn`, `eventually`,
/// `config`), so every listener kind is driven the same way.
pub(crate) mod tests {
    use super::*;
    use tokio::net::TcpStream;
    use tokio_stream::StreamExt;
    use tonic::transport::server::Connected;

    /// The next connection, failing the test after 5 s.
    pub(crate) async fn next_conn(incoming: &mut Incoming) -> Connection {
        tokio::time::timeout(Duration::from_secs(5), incoming.next())
            .await
            .expect("no connection within 5 s")
            .expect("incoming ended")
            .expect("incoming yielded an error")
    }

    /// Polls `cond` every 5 ms for up to 5 s.
    pub(crate) async fn eventually(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..1000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("not within 5 s: {what}");
    }

    /// Defaults a test changes one field of: no TLS, no uid filter, and a
    /// handshake timeout long enough never to fire by accident.
    pub(crate) fn config(listen: Vec<ListenAddr>) -> TransportConfig {
        TransportConfig {
            listen,
            tls: None,
            handshake_timeout: Duration::from_secs(5),
            max_connections: 64,
            unix_allowed_uids: None,
        }
    }

    /// Port 0: tests run in parallel and must never collide on a port.
    fn loopback() -> ListenAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// Catches: a logged address that cannot be pasted back into
    /// `--listen`, or a refusal that does not show the accepted forms.
    #[test]
    fn listen_addr_parses_and_prints_both_forms() {
        for text in ["127.0.0.1:50051", "[::1]:0", "unix:/run/ca/sock"] {
            let addr: ListenAddr = text.parse().unwrap();
            assert_eq!(addr.to_string(), text);
        }
        assert_eq!(
            "unix:/run/ca/sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/run/ca/sock".into())
        );
        for bad in [
            "unix:relative/sock",
            "unix:",
            "unix:/",
            "localhost:50051",
            "127.0.0.1",
            "",
        ] {
            let message = bad.parse::<ListenAddr>().unwrap_err().to_string();
            assert!(message.contains("unix:/absolute/path"), "{bad}: {message}");
            assert!(message.contains("127.0.0.1:50051"), "{bad}: {message}");
        }
    }

    /// Catches: a wildcard or public address counted as local, which would
    /// let plaintext or no-auth mode onto the network.
    #[test]
    fn only_loopback_and_unix_are_local() {
        let local = |s: &str| s.parse::<ListenAddr>().unwrap().is_local();
        assert!(
            local("127.0.0.1:1") && local("127.5.0.1:1") && local("[::1]:1") && local("unix:/a/b")
        );
        assert!(!local("0.0.0.0:1") && !local("[::]:1") && !local("192.0.2.1:1"));
    }

    /// Catches: a configuration that would start serving nothing, fail on
    /// the second bind, or fail every TLS handshake, accepted at start.
    #[tokio::test]
    async fn bind_refuses_empty_duplicate_and_zero_timeout() {
        let empty = Transport::bind(config(vec![])).await.unwrap_err();
        assert!(matches!(empty, TransportError::NoListenAddr));
        let twice = Transport::bind(config(vec![loopback(), loopback()])).await;
        assert!(matches!(
            twice,
            Err(TransportError::DuplicateListenAddr { .. })
        ));
        let mut zero = config(vec![loopback()]);
        zero.handshake_timeout = Duration::ZERO;
        let zero = Transport::bind(zero).await;
        assert!(matches!(zero, Err(TransportError::ZeroHandshakeTimeout)));
    }

    /// Catches: port 0 reported instead of the real port, a wrong peer
    /// address in `PeerInfo`, or Nagle delaying small gRPC frames.
    #[tokio::test]
    async fn plain_tcp_reports_the_peer_address_and_sets_nodelay() {
        let transport = Transport::bind(config(vec![loopback()])).await.unwrap();
        let bound = transport.bound();
        assert_eq!(bound.len(), 1);
        assert!(!bound[0].tls && !bound[0].client_certificates);
        let ListenAddr::Tcp(addr) = bound[0].addr else {
            panic!("not tcp: {bound:?}")
        };
        assert_ne!(addr.port(), 0, "the real port is reported");
        let mut incoming = transport.into_incoming();
        let client = TcpStream::connect(addr).await.unwrap();
        let conn = next_conn(&mut incoming).await;
        let info = conn.connect_info();
        assert_eq!(info.peer, Peer::Tcp(client.local_addr().unwrap()));
        assert!(info.client_sans.is_empty());
        let Io::Tcp(stream) = &conn.io else {
            panic!("not plain tcp")
        };
        assert!(stream.nodelay().unwrap());
    }

    /// The way the server uses it: tonic serves the stream, and a layer
    /// reads each call's `PeerInfo` from the request extensions.
    #[tokio::test]
    async fn tonic_serves_incoming_and_handlers_see_peer_info() {
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        let transport = Transport::bind(config(vec![loopback()])).await.unwrap();
        let ListenAddr::Tcp(addr) = transport.bound()[0].addr else {
            unreachable!()
        };
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let layer = tonic::service::InterceptorLayer::new(move |req: tonic::Request<()>| {
            let _ = seen_tx.send(req.extensions().get::<PeerInfo>().cloned());
            Ok(req)
        });
        let (_, health) = tonic_health::server::health_reporter();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(layer)
                .add_service(health)
                .serve_with_incoming_shutdown(transport.into_incoming(), async {
                    let _ = stopped.await;
                }),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        let request = HealthCheckRequest {
            service: String::new(),
        };
        client.check(request).await.unwrap();
        let info = seen
            .recv()
            .await
            .unwrap()
            .expect("no PeerInfo in the extensions");
        assert!(matches!(info.peer, Peer::Tcp(peer) if peer.ip() == addr.ip()));
        drop(client);
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    /// Catches: accept tasks that outlive the stream and keep the port
    /// open (and accepting) after the server stopped.
    #[tokio::test]
    async fn dropping_incoming_closes_the_listener() {
        let transport = Transport::bind(config(vec![loopback()])).await.unwrap();
        let ListenAddr::Tcp(addr) = transport.bound()[0].addr else {
            unreachable!()
        };
        let incoming = transport.into_incoming();
        drop(incoming);
        // The aborted task drops its listener; then connecting is refused.
        let mut refused = false;
        for _ in 0..1000 {
            if TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            refused,
            "the listener still accepts after Incoming was dropped"
        );
    }
}
