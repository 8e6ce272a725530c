//! TCP listeners: the accept loop, and TLS on top of it when configured.
//!
//! The rustls config lives in an [`ArcSwap`] so [`TlsReloader::reload`] can
//! swap in new certificates while connections keep the config they were
//! accepted with. Each handshake runs in its own task under the handshake
//! timeout, so a silent client never holds up the others.

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use x509_parser::extensions::GeneralName;

use super::{
    accept_failed, accept_succeeded, Admission, Admitted, Backoff, ClientSan, Connection, Counters,
    Io, ListenAddr, Peer, TlsFiles, TransportError,
};

/// Re-reads the TLS files and swaps the config that new handshakes use;
/// cheap to clone, for a SIGHUP handler.
#[derive(Clone)]
pub struct TlsReloader {
    /// The paths, re-read on each reload: rotation replaces the files, not
    /// the flags.
    files: Arc<TlsFiles>,
    /// The config new handshakes take; an [`ArcSwap`] so a reload never
    /// blocks an accept and a handshake in flight keeps its own.
    current: Arc<ArcSwap<ServerConfig>>,
}

impl std::fmt::Debug for TlsReloader {
    /// Names the files only: the config holds the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloader")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// Loading at bind, reloading on SIGHUP, and what the accept loop reads.
impl TlsReloader {
    /// Loads the files once at bind, so a bad certificate or key fails the
    /// start rather than every handshake.
    pub(crate) fn load(files: TlsFiles) -> Result<TlsReloader, TransportError> {
        let config = server_config(&files)?;
        Ok(TlsReloader {
            files: Arc::new(files),
            current: Arc::new(ArcSwap::new(config)),
        })
    }

    /// Re-reads the certificate chain, key and client CA; on success new
    /// handshakes use them (open connections keep theirs), on error the
    /// previous config stays in force (the caller logs which). Reads files
    /// synchronously.
    pub fn reload(&self) -> Result<(), TransportError> {
        let config = server_config(&self.files)?;
        self.current.store(config);
        Ok(())
    }

    /// Whether client certificates are asked for, for the startup log:
    /// decided by the configured files, so it cannot change on a reload.
    pub(crate) fn asks_client_cert(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The config for one handshake, taken at accept time: a reload while
    /// it runs does not change the rules it is held to.
    pub(crate) fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }
}

/// Builds the rustls config: ring, TLS 1.2 and 1.3, ALPN `h2`, and when a
/// client CA is given, optional client certificates that must chain to it.
fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TransportError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs(&files.cert_chain)?;
    let key = PrivateKeyDer::from_pem_file(&files.private_key).map_err(|e| {
        TransportError::PrivateKey {
            path: files.private_key.clone(),
            reason: pem_problem(&e),
        }
    })?;
    let identity_error = |source| TransportError::TlsIdentity {
        cert_chain: files.cert_chain.clone(),
        private_key: files.private_key.clone(),
        source,
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(identity_error)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let ca_error = |reason: String| TransportError::ClientCa {
                path: path.clone(),
                reason,
            };
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| ca_error(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(identity_error)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The certificates of a PEM file. A file with none is refused here, saying
/// so, rather than later as rustls' vaguer complaint about an empty chain
/// or root store.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let problem = |reason| TransportError::Certificates {
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| problem(pem_problem(&e)))?;
    if certs.is_empty() {
        return Err(problem("it holds no CERTIFICATE block".to_owned()));
    }
    Ok(certs)
}

/// Describes a PEM error without the file's bytes: some variants quote a
/// line of the file, which in a key file would be key material.
fn pem_problem(error: &pem::Error) -> String {
    match error {
        pem::Error::Io(e) => e.to_string(),
        pem::Error::NoItemsFound => "it holds no block of the expected kind".to_owned(),
        pem::Error::MissingSectionEnd { .. } => "a PEM block has no END line".to_owned(),
        pem::Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".to_owned(),
        pem::Error::Base64Decode(_) => "a PEM block is not valid base64".to_owned(),
        _ => "it is not valid PEM".to_owned(),
    }
}

/// The URI and DNS subject alternative names of a (verified) certificate.
/// Never the CN, IPs or emails: those are not identities here. A
/// certificate x509-parser cannot read yields none, so the peer is treated
/// as having no certificate rather than guessed at.
pub(crate) fn client_sans(der: &[u8]) -> Vec<ClientSan> {
    let cert = match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => cert,
        Err(error) => {
            tracing::warn!(%error, "cannot parse a verified client certificate; ignoring its names");
            return Vec::new();
        }
    };
    match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(ClientSan::Uri((*uri).to_owned())),
                // DNS names compare without case; the callers file keeps
                // them lowercased.
                GeneralName::DNSName(dns) => Some(ClientSan::Dns(dns.to_ascii_lowercase())),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(error) => {
            tracing::warn!(%error, "cannot read a verified client certificate's names; ignoring them");
            Vec::new()
        }
    }
}

/// Runs one handshake in its own task, with the config current at accept
/// time, and queues the connection when it completes by the connection's
/// handshake deadline (which also covers the HTTP/2 preface after it).
fn spawn_handshake(
    config: Arc<ServerConfig>,
    stream: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
    tx: &mpsc::Sender<Connection>,
    counters: &Counters,
) {
    let (tx, counters) = (tx.clone(), counters.clone());
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let deadline = admitted.deadline;
        let outcome = tokio::select! {
            _ = tx.closed() => return,
            outcome = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => outcome,
        };
        let stream = match outcome {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                counters.bump(|c| &c.handshakes_failed);
                tracing::debug!(%peer, %error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                counters.bump(|c| &c.handshakes_timed_out);
                tracing::debug!(%peer, "TLS handshake not finished by the handshake deadline");
                return;
            }
        };
        let sans = match stream.get_ref().1.peer_certificates() {
            Some([end_entity, ..]) => client_sans(end_entity),
            _ => Vec::new(),
        };
        let conn = Connection::new(Io::Tls(Box::new(stream)), Peer::Tcp(peer), sans, admitted);
        let _ = tx.send(conn).await;
    });
}

/// Accepts on one TCP listener until [`super::Incoming`] is gone. Every
/// connection takes a permit of `admission` first; without one it is closed
/// at once, so TLS handshakes in flight are bounded by the same cap.
pub(crate) async fn accept(
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<TlsReloader>,
    admission: Admission,
    tx: mpsc::Sender<Connection>,
    counters: Counters,
) {
    let name = ListenAddr::Tcp(addr);
    let mut backoff = Backoff::default();
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => match accept_failed(error, &name, &mut backoff, &counters, &tx).await {
                true => continue,
                false => return,
            },
        };
        accept_succeeded(&name, &mut backoff);
        let Some(admitted) = admission.admit(&name, &counters) else {
            continue;
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        match &tls {
            Some(reloader) => {
                spawn_handshake(reloader.current(), stream, peer, admitted, &tx, &counters)
            }
            None => {
                let conn = Connection::new(Io::Tcp(stream), Peer::Tcp(peer), Vec::new(), admitted);
                if tx.send(conn).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{config, eventually, next_conn};
    use super::super::{Incoming, PeerInfo, Transport};
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, SanType,
    };
    use rustls::ClientConfig;
    use rustls_pki_types::ServerName;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio_rustls::client::TlsStream;
    use tonic::transport::server::Connected;

    /// A CA that can sign: each test makes its own, so no test trusts
    /// another's certificates by accident.
    type Ca = CertifiedIssuer<'static, KeyPair>;
    /// A certificate and its key, both PEM.
    type Identity = (String, String);

    /// A self-signed CA named `name`, generated per test run: no fixture
    /// files to expire.
    fn ca(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    /// A certificate signed by `ca` with `sans` and one extended key usage;
    /// it gets a CN too, so tests can show a CN never counts as a name.
    fn leaf(ca: &Ca, cn: &str, sans: Vec<SanType>, eku: ExtendedKeyUsagePurpose) -> Identity {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![eku];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// The server's certificate, for `localhost`, the name clients check.
    fn server_leaf(ca: &Ca) -> Identity {
        let sans = vec![SanType::DnsName("localhost".try_into().unwrap())];
        leaf(ca, "server", sans, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with `sans` and a CN that must never count.
    fn client_leaf(ca: &Ca, sans: Vec<SanType>) -> Identity {
        leaf(ca, "client-cn", sans, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A temp dir with the server's files, and the CAs that sign them.
    struct Setup {
        /// Holds the PEM files the server reads, as in production.
        dir: tempfile::TempDir,
        /// What clients trust the server by.
        server_ca: Ca,
        /// What the server checks client certificates against; a separate
        /// CA, so a server certificate is no client identity.
        client_ca: Ca,
    }

    /// The server side of each test, on files like a deployment's.
    impl Setup {
        /// The server's identity and the client CA, written to files.
        fn new() -> Setup {
            let setup = Setup {
                dir: tempfile::tempdir().unwrap(),
                server_ca: ca("server-ca"),
                client_ca: ca("client-ca"),
            };
            setup.write_identity(&server_leaf(&setup.server_ca));
            std::fs::write(setup.path("client-ca.pem"), setup.client_ca.pem()).unwrap();
            setup
        }

        /// A file in the setup's directory.
        fn path(&self, name: &str) -> std::path::PathBuf {
            self.dir.path().join(name)
        }

        /// Replaces the server's certificate and key, as a rotation does.
        fn write_identity(&self, (cert, key): &Identity) {
            std::fs::write(self.path("server.pem"), cert).unwrap();
            std::fs::write(self.path("server.key"), key).unwrap();
        }

        /// The files as the command line would name them.
        fn files(&self, client_ca: bool) -> TlsFiles {
            TlsFiles {
                cert_chain: self.path("server.pem"),
                private_key: self.path("server.key"),
                client_ca: client_ca.then(|| self.path("client-ca.pem")),
            }
        }

        /// A TLS listener on a free loopback port, checked to report TLS
        /// and client certificates as configured.
        async fn bind(&self, client_ca: bool, timeout: Duration) -> (Transport, SocketAddr) {
            let mut config = config(vec!["127.0.0.1:0".parse().unwrap()]);
            config.tls = Some(self.files(client_ca));
            config.handshake_timeout = timeout;
            let transport = Transport::bind(config).await.unwrap();
            let bound = transport.bound();
            assert!(bound[0].tls);
            assert_eq!(bound[0].client_certificates, client_ca);
            let ListenAddr::Tcp(addr) = bound[0].addr else {
                panic!("not tcp")
            };
            (transport, addr)
        }
    }

    /// A client trusting only `trust`, presenting `identity` if given,
    /// offering `h2` as gRPC clients do.
    fn client_config(trust: &Ca, identity: Option<&Identity>) -> ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(trust.der().clone()).unwrap();
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        config
    }

    /// Handshakes as `localhost` and checks ALPN picked `h2`: without it
    /// tonic's HTTP/2 would fail after a handshake that looked fine.
    async fn connect(
        addr: SocketAddr,
        config: ClientConfig,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        Ok(stream)
    }

    /// Connects with `config` and returns what the server saw.
    async fn peer_of(incoming: &mut Incoming, addr: SocketAddr, config: ClientConfig) -> PeerInfo {
        let client = connect(addr, config).await.expect("handshake");
        let info = next_conn(incoming).await.connect_info();
        assert_eq!(
            info.peer,
            Peer::Tcp(client.get_ref().0.local_addr().unwrap())
        );
        info
    }

    /// A URI SAN, such as a SPIFFE id.
    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    /// A DNS SAN.
    fn dns(s: &str) -> SanType {
        SanType::DnsName(s.try_into().unwrap())
    }

    /// Catches: the CN, an IP or an email taken as an identity; names from
    /// a certificate of another CA reaching a handler; a failed handshake
    /// that stops the listener.
    #[tokio::test]
    async fn client_certificates_yield_only_verified_uri_and_dns_names() {
        let setup = Setup::new();
        let (transport, addr) = setup.bind(true, Duration::from_secs(5)).await;
        let counters = transport.counters();
        let mut incoming = transport.into_incoming();

        let anonymous = peer_of(&mut incoming, addr, client_config(&setup.server_ca, None)).await;
        assert!(anonymous.client_sans.is_empty());

        let sans = vec![
            uri("spiffe://test/adapter-a"),
            dns("adapter-a.test"),
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
            SanType::Rfc822Name("a@test".try_into().unwrap()),
        ];
        let id = client_leaf(&setup.client_ca, sans);
        let named = peer_of(
            &mut incoming,
            addr,
            client_config(&setup.server_ca, Some(&id)),
        )
        .await;
        let want = [
            ClientSan::Uri("spiffe://test/adapter-a".into()),
            ClientSan::Dns("adapter-a.test".into()),
        ];
        assert_eq!(&named.client_sans[..], &want[..]);

        let cn_only = client_leaf(&setup.client_ca, vec![]);
        let cn_only = peer_of(
            &mut incoming,
            addr,
            client_config(&setup.server_ca, Some(&cn_only)),
        )
        .await;
        assert!(cn_only.client_sans.is_empty(), "{:?}", cn_only.client_sans);

        // A certificate from another CA fails the handshake: with TLS 1.3
        // the client may finish first, then reads the server's alert.
        let stranger = client_leaf(&ca("other-ca"), vec![uri("spiffe://test/evil")]);
        if let Ok(mut client) =
            connect(addr, client_config(&setup.server_ca, Some(&stranger))).await
        {
            assert!(!matches!(client.read(&mut [0; 16]).await, Ok(n) if n > 0));
        }
        eventually("the handshake is counted as failed", || {
            counters.snapshot().handshakes_failed == 1
        })
        .await;
        // It never reached Incoming: the next connection is a new client.
        let after = peer_of(&mut incoming, addr, client_config(&setup.server_ca, None)).await;
        assert!(after.client_sans.is_empty());
    }

    /// Catches: names of an unverified certificate trusted when no client
    /// CA is configured, or TLS 1.2 clients locked out.
    #[tokio::test]
    async fn without_client_ca_tls12_and_tls13_clients_connect() {
        let setup = Setup::new();
        let (transport, addr) = setup.bind(false, Duration::from_secs(5)).await;
        let mut incoming = transport.into_incoming();
        let id = client_leaf(&setup.client_ca, vec![uri("spiffe://test/adapter-a")]);
        let info = peer_of(
            &mut incoming,
            addr,
            client_config(&setup.server_ca, Some(&id)),
        )
        .await;
        assert!(info.client_sans.is_empty(), "no client CA, so no names");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(setup.server_ca.der().clone()).unwrap();
        let mut tls12 = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls12.alpn_protocols = vec![b"h2".to_vec()];
        let client = connect(addr, tls12).await.expect("TLS 1.2 handshake");
        assert_eq!(
            client.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        next_conn(&mut incoming).await;
    }

    /// Catches: a rotation that needs a restart, or a broken file on
    /// SIGHUP that takes TLS down instead of keeping the old certificate.
    #[tokio::test]
    async fn reload_swaps_the_certificate_and_keeps_it_on_error() {
        let setup = Setup::new();
        let (transport, addr) = setup.bind(true, Duration::from_secs(5)).await;
        let reloader = transport.tls_reloader().unwrap();
        let mut incoming = transport.into_incoming();
        peer_of(&mut incoming, addr, client_config(&setup.server_ca, None)).await;

        let new_ca = ca("new-server-ca");
        setup.write_identity(&server_leaf(&new_ca));
        reloader.reload().unwrap();
        peer_of(&mut incoming, addr, client_config(&new_ca, None)).await;
        let old = connect(addr, client_config(&setup.server_ca, None)).await;
        assert!(
            old.is_err(),
            "a client trusting only the old CA still connected"
        );

        std::fs::write(setup.path("server.pem"), "not a certificate").unwrap();
        let error = reloader.reload().unwrap_err().to_string();
        assert!(error.contains("server.pem"), "{error}");
        peer_of(&mut incoming, addr, client_config(&new_ca, None)).await;
    }

    /// Catches: an error that quotes key material from a malformed key
    /// file, or that does not say which file is wrong.
    #[tokio::test]
    async fn bad_files_are_named_without_quoting_the_key() {
        let setup = Setup::new();
        let key = setup.path("server.key");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----SECRETBYTES\n").unwrap();
        let error = TlsReloader::load(setup.files(true))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("server.key") && !error.contains("SECRETBYTES"),
            "{error}"
        );

        // A key that is not the certificate's.
        std::fs::write(&key, KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let error = TlsReloader::load(setup.files(true)).unwrap_err();
        assert!(
            matches!(error, TransportError::TlsIdentity { .. }),
            "{error}"
        );

        setup.write_identity(&server_leaf(&setup.server_ca));
        std::fs::remove_file(setup.path("client-ca.pem")).unwrap();
        let error = TlsReloader::load(setup.files(true))
            .unwrap_err()
            .to_string();
        assert!(error.contains("client-ca.pem"), "{error}");
    }

    /// Catches: a client that never speaks holding up every handshake
    /// behind it, or staying connected past the handshake timeout.
    #[tokio::test]
    async fn a_silent_client_is_closed_at_the_timeout_without_blocking_others() {
        let setup = Setup::new();
        let timeout = Duration::from_millis(200);
        let (transport, addr) = setup.bind(false, timeout).await;
        let counters = transport.counters();
        let mut incoming = transport.into_incoming();
        let started = tokio::time::Instant::now();
        let mut silent = TcpStream::connect(addr).await.unwrap();

        // Accepted after the silent one, finished while it still hangs.
        peer_of(&mut incoming, addr, client_config(&setup.server_ca, None)).await;
        let mut byte = [0; 1];
        assert!(
            matches!(silent.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "the silent client was closed before the second handshake finished"
        );

        let read = tokio::time::timeout(Duration::from_secs(3), silent.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "not closed: {read:?}"
        );
        assert!(
            started.elapsed() >= timeout - Duration::from_millis(20),
            "closed before the timeout"
        );
        eventually("the timeout is counted", || {
            counters.snapshot().handshakes_timed_out == 1
        })
        .await;
        assert_eq!(counters.snapshot().handshakes_failed, 0);
    }
}
