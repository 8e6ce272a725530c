//! TLS for the integration tests: a small PKI made with rcgen in the test
//! (CAs, a server certificate for 127.0.0.1 and localhost, client
//! certificates with chosen SANs), the server's PEM files in a temp dir, and
//! tonic clients over rustls that count how often they open a connection.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use credential_authority::pb::credential_authority_client::CredentialAuthorityClient;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use super::{Bearer, Client, Server};

/// A CA that can sign certificates.
pub type Ca = CertifiedIssuer<'static, KeyPair>;

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Identity {
    pub cert: String,
    pub key: String,
}

/// A self-signed CA named `name`.
pub fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(ca: &Ca, cn: &str, sans: Vec<SanType>, eku: ExtendedKeyUsagePurpose) -> Identity {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![eku];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    Identity {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// A server certificate for `localhost` and `127.0.0.1`.
pub fn server_identity(ca: &Ca) -> Identity {
    let sans = vec![
        dns("localhost"),
        SanType::IpAddress("127.0.0.1".parse().unwrap()),
    ];
    leaf(
        ca,
        "credential-authority",
        sans,
        ExtendedKeyUsagePurpose::ServerAuth,
    )
}

/// A client certificate with subject CN `cn` and these SANs.
pub fn client_identity(ca: &Ca, cn: &str, sans: Vec<SanType>) -> Identity {
    leaf(ca, cn, sans, ExtendedKeyUsagePurpose::ClientAuth)
}

/// A URI SAN.
pub fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

/// A DNS SAN.
pub fn dns(s: &str) -> SanType {
    SanType::DnsName(s.try_into().unwrap())
}

/// The server's TLS files in a temp dir, and the CAs behind them.
pub struct ServerPki {
    dir: tempfile::TempDir,
    /// Signs the server certificate the files hold at first.
    pub server_ca: Ca,
    /// Signs the client certificates the server accepts.
    pub client_ca: Ca,
}

impl ServerPki {
    /// A server certificate from a new server CA, and a new client CA.
    pub fn new() -> ServerPki {
        let pki = ServerPki {
            dir: tempfile::tempdir().unwrap(),
            server_ca: ca("test server CA"),
            client_ca: ca("test client CA"),
        };
        pki.write_server(&server_identity(&pki.server_ca));
        std::fs::write(pki.path("client-ca.pem"), pki.client_ca.pem()).unwrap();
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn cert_path(&self) -> PathBuf {
        self.path("server.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.path("server.key")
    }

    /// Overwrites the server's certificate and key files.
    pub fn write_server(&self, identity: &Identity) {
        std::fs::write(self.cert_path(), &identity.cert).unwrap();
        std::fs::write(self.key_path(), &identity.key).unwrap();
    }

    /// `--tls-cert` and `--tls-key`, and `--tls-client-ca` when asked.
    pub fn flags(&self, client_ca: bool) -> Vec<String> {
        let mut flags = vec![
            "--tls-cert".to_owned(),
            path_arg(&self.cert_path()),
            "--tls-key".to_owned(),
            path_arg(&self.key_path()),
        ];
        if client_ca {
            flags.push("--tls-client-ca".to_owned());
            flags.push(path_arg(&self.path("client-ca.pem")));
        }
        flags
    }
}

fn path_arg(path: &Path) -> String {
    path.to_str().expect("temp paths are UTF-8").to_owned()
}

/// Borrows owned flags the way `Server::start` takes them.
pub fn as_strs(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

/// A rustls client config trusting only `trust`, presenting `identity` when
/// given, offering ALPN h2.
pub fn client_config(trust: &Ca, identity: Option<&Identity>) -> ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(trust.der().clone()).unwrap();
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let chain = vec![CertificateDer::from_pem_slice(id.cert.as_bytes()).unwrap()];
            let key = PrivateKeyDer::from_pem_slice(id.key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// A tonic channel over TLS to `addr` (server name `localhost`), and how
/// many connections it has opened: one unless it had to reconnect.
pub struct TlsChannel {
    pub channel: Channel,
    pub connects: Arc<AtomicUsize>,
}

impl TlsChannel {
    pub fn connects(&self) -> usize {
        self.connects.load(Ordering::SeqCst)
    }

    /// An authority client on this channel presenting `key` (or none).
    pub fn authority(&self, key: Option<&str>) -> Client {
        CredentialAuthorityClient::with_interceptor(self.channel.clone(), Bearer::new(key))
    }
}

/// Connects (TCP, TLS handshake, HTTP/2) with `config`.
pub async fn tls_channel(
    addr: SocketAddr,
    config: ClientConfig,
) -> Result<TlsChannel, tonic::transport::Error> {
    let config = Arc::new(config);
    let connects = Arc::new(AtomicUsize::new(0));
    let counter = connects.clone();
    let connector = tower::service_fn(move |_: http::Uri| {
        let (config, counter) = (config.clone(), counter.clone());
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let tcp = TcpStream::connect(addr).await?;
            let name = ServerName::try_from("localhost").unwrap();
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    let channel = Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(20))
        .connect_with_connector(connector)
        .await?;
    Ok(TlsChannel { channel, connects })
}

/// An authority client over TLS trusting `trust`, with an optional client
/// certificate and caller key; panics when it cannot connect.
pub async fn tls_client(
    server: &Server,
    trust: &Ca,
    identity: Option<&Identity>,
    key: Option<&str>,
) -> Client {
    tls_channel(server.addr, client_config(trust, identity))
        .await
        .expect("TLS connection")
        .authority(key)
}

/// The TLS outcome of a SIGHUP.
#[derive(Debug, PartialEq, Eq)]
pub enum TlsReload {
    Reloaded,
    Refused,
}

/// Sends SIGHUP and waits (bounded) for the server's TLS reload line.
pub fn reload_tls(server: &Server) -> TlsReload {
    let count = |log: &str, line: &str| log.matches(line).count();
    let before = server.log();
    let (reloaded, refused) = (
        count(&before, "TLS certificate reloaded"),
        count(&before, "TLS certificate refused"),
    );
    server.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = server.log();
        if count(&log, "TLS certificate reloaded") > reloaded {
            return TlsReload::Reloaded;
        }
        if count(&log, "TLS certificate refused") > refused {
            return TlsReload::Refused;
        }
        assert!(Instant::now() < deadline, "no TLS reload logged:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
