//! Unix socket listeners: a private directory, careful handling of old
//! socket files, peer credentials, and removing the socket on shutdown.
//!
//! Access is controlled by the directory, not the socket's mode: binding
//! inside a directory only this uid can enter keeps others out from the
//! first instant, where a chmod after bind would race.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::state_dir::{euid, private_dir, DirProblem};

use super::{
    accept_failed, accept_succeeded, Admission, Backoff, Connection, Counters, Io, ListenAddr,
    Peer, TransportError,
};

/// How long probing an old socket may take before it counts as alive.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Binds a Unix socket at `path` inside a private directory, replacing a
/// dead socket left by an earlier run, and records it in `files` so it is
/// removed again on shutdown.
pub(crate) async fn bind(
    path: &Path,
    files: &mut SocketFiles,
) -> Result<UnixListener, TransportError> {
    let dir = match path.parent() {
        Some(dir) if path.is_absolute() => dir,
        _ => {
            return Err(TransportError::UnixPath {
                path: path.to_owned(),
            })
        }
    };
    prepare_dir(dir)?;
    clear_stale(path).await?;
    let bind_error = |source| TransportError::Bind {
        addr: ListenAddr::Unix(path.to_owned()),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    let meta = fs::symlink_metadata(path).map_err(bind_error)?;
    files.0.push(SocketFile {
        path: path.to_owned(),
        dev: meta.dev(),
        ino: meta.ino(),
    });
    Ok(listener)
}

/// Makes sure `dir` is a directory owned by this uid that nobody else may
/// enter, creating only its last component (mode 0700) if it is missing: a
/// mistyped path fails instead of growing a tree of directories.
fn prepare_dir(dir: &Path) -> Result<(), TransportError> {
    let problem = match private_dir(dir) {
        Ok(true) => {
            tracing::info!(dir = %dir.display(), "created the socket directory");
            return Ok(());
        }
        Ok(false) => return Ok(()),
        Err(problem) => problem,
    };
    let dir = dir.to_owned();
    let (problem, euid) = match problem {
        DirProblem::Io { source, .. } => return Err(TransportError::UnixDir { dir, source }),
        DirProblem::NotADirectory => {
            let source = io::ErrorKind::NotADirectory.into();
            return Err(TransportError::UnixDir { dir, source });
        }
        DirProblem::NotOwned { owner, euid } => (format!("it belongs to uid {owner}"), euid),
        DirProblem::NotPrivate { mode } => (
            format!("its mode {mode:04o} lets group or others in"),
            euid(),
        ),
    };
    Err(TransportError::UnixDirInsecure { dir, problem, euid })
}

/// Clears the way for binding: nothing there is fine, a socket nobody
/// listens on is removed, anything else is refused. A non-socket is never
/// deleted.
async fn clear_stale(path: &Path) -> Result<(), TransportError> {
    let stale_error = |source| TransportError::UnixStale {
        path: path.to_owned(),
        source,
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(stale_error(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(TransportError::UnixNotASocket {
            path: path.to_owned(),
        });
    }
    let in_use = || TransportError::UnixInUse {
        path: path.to_owned(),
    };
    match tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await {
        // Connected, or a listener whose queue is full: alive either way.
        Ok(Ok(_)) | Err(_) => Err(in_use()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => Err(in_use()),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(stale_error(e)),
            }
            tracing::info!(path = %path.display(), "removed a stale socket nobody listened on");
            Ok(())
        }
        Ok(Err(e)) => Err(stale_error(e)),
    }
}

/// Accepts on one Unix listener until [`super::Incoming`] is gone; peers
/// whose uid is not allowed are closed before tonic ever sees them.
pub(crate) async fn accept(
    listener: UnixListener,
    name: ListenAddr,
    allowed_uids: Option<Arc<[u32]>>,
    admission: Admission,
    tx: mpsc::Sender<Connection>,
    counters: Counters,
) {
    let mut backoff = Backoff::default();
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => match accept_failed(error, &name, &mut backoff, &counters, &tx).await {
                true => continue,
                false => return,
            },
        };
        accept_succeeded(&name, &mut backoff);
        let cred = match stream.peer_cred() {
            Ok(cred) => cred,
            Err(error) => {
                counters.bump(|c| &c.unix_peers_refused);
                tracing::warn!(listener = %name, %error, "cannot read a Unix peer's credentials; closing the connection");
                continue;
            }
        };
        let (uid, pid) = (cred.uid(), cred.pid());
        if allowed_uids
            .as_ref()
            .is_some_and(|allowed| !allowed.contains(&uid))
        {
            counters.bump(|c| &c.unix_peers_refused);
            tracing::warn!(listener = %name, uid, ?pid, "closing a Unix connection from a uid that is not allowed");
            continue;
        }
        let Some(admitted) = admission.admit(&name, &counters) else {
            continue;
        };
        let conn = Connection::new(
            Io::Unix(stream),
            Peer::Unix { uid, pid },
            Vec::new(),
            admitted,
        );
        if tx.send(conn).await.is_err() {
            return;
        }
    }
}

/// The socket files this process bound, removed when dropped.
#[derive(Debug, Default)]
pub(crate) struct SocketFiles(Vec<SocketFile>);

/// One socket this process bound, and how to recognise it later: the path
/// alone could by then name a successor's socket.
#[derive(Debug)]
struct SocketFile {
    /// Where it was bound.
    path: PathBuf,
    /// The device of the socket file right after bind.
    dev: u64,
    /// The inode of the socket file right after bind.
    ino: u64,
}

impl Drop for SocketFiles {
    /// On drop rather than in a shutdown step, so a failed start and a
    /// panic clean up too.
    fn drop(&mut self) {
        for file in &self.0 {
            file.remove();
        }
    }
}

impl SocketFile {
    /// Removes the file only if it still is the socket we bound (same
    /// device and inode): a successor's socket, or anything put there
    /// since, is left alone. The directory is ours alone, so nobody else
    /// can swap the file between the check and the unlink.
    fn remove(&self) {
        let path = self.path.display();
        match fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino => {
                match fs::remove_file(&self.path) {
                    Ok(()) => tracing::debug!(%path, "removed the socket file"),
                    Err(error) => tracing::warn!(%path, %error, "cannot remove the socket file"),
                }
            }
            Ok(_) => {
                tracing::info!(%path, "left the socket path alone: it is no longer the socket this server bound")
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(%path, %error, "cannot check the socket file before removing it")
            }
        }
    }
}

/// Keeps the Unix socket files until the last clone, the
/// [`super::Incoming`] and the [`super::Transport`] are gone, then removes
/// those that still are the sockets this process bound. Hold one until
/// tonic has drained.
#[derive(Clone, Debug)]
pub struct SocketCleanup {
    /// Held only to be dropped with the last clone.
    _files: Arc<SocketFiles>,
}

impl SocketCleanup {
    /// Takes over the files [`bind`] recorded, right after binding, so
    /// they are removed however the start ends.
    pub(crate) fn new(files: SocketFiles) -> SocketCleanup {
        SocketCleanup {
            _files: Arc::new(files),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{config, eventually, next_conn};
    use super::super::Transport;
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::AsyncReadExt;
    use tonic::transport::server::Connected;

    /// Binds through [`Transport::bind`], as the server does, so the tests
    /// cover the wiring as well as this module.
    async fn bind_at(path: &Path, allowed: Option<Vec<u32>>) -> Result<Transport, TransportError> {
        let mut config = config(vec![ListenAddr::Unix(path.to_owned())]);
        config.unix_allowed_uids = allowed;
        Transport::bind(config).await
    }

    /// A temp dir only this uid may enter (tempfile's honours the umask).
    fn private_tmp() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).unwrap();
        tmp
    }

    /// The permission bits, with setuid, setgid and sticky, as the
    /// refusals print them.
    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    /// Catches: a socket directory created open to others, or a Unix peer
    /// reported without the uid and pid the kernel gave.
    #[tokio::test]
    async fn a_missing_dir_is_created_0700_and_peers_carry_uid_and_pid() {
        let tmp = private_tmp();
        let dir = tmp.path().join("run");
        let path = dir.join("sock");
        let transport = bind_at(&path, None).await.unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
        let bound = transport.bound();
        assert_eq!(bound[0].addr, ListenAddr::Unix(path.clone()));
        assert!(!bound[0].tls && !bound[0].client_certificates);

        let mut incoming = transport.into_incoming();
        let _client = UnixStream::connect(&path).await.unwrap();
        let info = next_conn(&mut incoming).await.connect_info();
        let pid = i32::try_from(std::process::id()).unwrap();
        assert_eq!(
            info.peer,
            Peer::Unix {
                uid: euid(),
                pid: Some(pid)
            }
        );
        assert!(info.client_sans.is_empty());
    }

    /// Catches: a mistyped socket path growing a tree of directories, or a
    /// relative path (which depends on the working directory) accepted.
    #[tokio::test]
    async fn only_the_last_component_is_created() {
        let tmp = private_tmp();
        let path = tmp.path().join("a/b/sock");
        let error = bind_at(&path, None).await.unwrap_err();
        assert!(matches!(error, TransportError::UnixDir { .. }), "{error}");
        assert!(!tmp.path().join("a").exists());
        let relative = bind_at(Path::new("relative/sock"), None).await.unwrap_err();
        assert!(
            matches!(relative, TransportError::UnixPath { .. }),
            "{relative}"
        );
    }

    /// Catches: a socket bound where group members could connect, or the
    /// server "fixing" a directory's mode that is not its to change.
    #[tokio::test]
    async fn a_group_readable_dir_is_refused() {
        let tmp = private_tmp();
        let dir = tmp.path().join("shared");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
        let path = dir.join("sock");
        let error = bind_at(&path, None).await.unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, TransportError::UnixDirInsecure { .. }),
            "{message}"
        );
        assert!(
            message.contains(&format!("chmod 700 {}", dir.display())),
            "{message}"
        );
        assert!(!path.exists());
        assert_eq!(
            mode(&dir),
            0o750,
            "the directory's mode is not ours to change"
        );
    }

    /// Catches: a crashed server's socket file blocking every later start.
    #[tokio::test]
    async fn a_stale_socket_is_replaced() {
        let tmp = private_tmp();
        let path = tmp.path().join("sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "the dead listener left its file");
        let mut incoming = bind_at(&path, None).await.unwrap().into_incoming();
        let _client = UnixStream::connect(&path).await.unwrap();
        next_conn(&mut incoming).await;
    }

    /// Catches: a second server stealing a live server's socket path.
    #[tokio::test]
    async fn a_live_socket_is_refused() {
        let tmp = private_tmp();
        let path = tmp.path().join("sock");
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let error = bind_at(&path, None).await.unwrap_err();
        assert!(
            error.to_string().contains("another server is listening on"),
            "{error}"
        );
        std::os::unix::net::UnixStream::connect(&path).expect("the live server keeps its socket");
        drop(live);
    }

    /// Catches: a mistyped path deleting someone's file.
    #[tokio::test]
    async fn a_regular_file_at_the_path_is_refused_and_kept() {
        let tmp = private_tmp();
        let path = tmp.path().join("sock");
        fs::write(&path, "precious").unwrap();
        let error = bind_at(&path, None).await.unwrap_err();
        assert!(
            matches!(error, TransportError::UnixNotASocket { .. }),
            "{error}"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
    }

    /// Catches: the socket removed while tonic still drains its connections,
    /// or left behind after a clean shutdown.
    #[tokio::test]
    async fn the_socket_goes_with_the_last_guard() {
        let tmp = private_tmp();
        let path = tmp.path().join("sock");
        let incoming = bind_at(&path, None).await.unwrap().into_incoming();
        let guard = incoming.socket_cleanup();
        let second = guard.clone();
        drop(incoming);
        drop(guard);
        assert!(path.exists(), "removed while a guard was alive");
        drop(second);
        assert!(!path.exists(), "left behind after the last guard");
    }

    /// Catches: a stopping server deleting its successor's socket.
    #[tokio::test]
    async fn a_replaced_socket_is_left_alone() {
        let tmp = private_tmp();
        let path = tmp.path().join("sock");
        let incoming = bind_at(&path, None).await.unwrap().into_incoming();
        fs::remove_file(&path).unwrap();
        let successor = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(incoming);
        assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
        std::os::unix::net::UnixStream::connect(&path).expect("the successor's socket survives");
        drop(successor);
    }

    /// Catches: a start that fails on a later listener leaving a socket file
    /// nobody serves.
    #[tokio::test]
    async fn a_failed_bind_removes_the_sockets_it_made() {
        let tmp = private_tmp();
        let path = tmp.path().join("sock");
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = ListenAddr::Tcp(taken.local_addr().unwrap());
        let error = Transport::bind(config(vec![ListenAddr::Unix(path.clone()), tcp]))
            .await
            .unwrap_err();
        assert!(matches!(error, TransportError::Bind { .. }), "{error}");
        assert!(!path.exists());
    }

    /// Catches: a uid outside `--unix-allowed-uids` reaching tonic, or being
    /// refused silently (it must be counted).
    #[tokio::test]
    async fn allowed_uids_pass_and_others_are_closed_at_once() {
        let tmp = private_tmp();
        let own = tmp.path().join("own");
        let mut incoming = bind_at(&own, Some(vec![euid()]))
            .await
            .unwrap()
            .into_incoming();
        let _client = UnixStream::connect(&own).await.unwrap();
        let info = next_conn(&mut incoming).await.connect_info();
        assert!(matches!(info.peer, Peer::Unix { uid, .. } if uid == euid()));

        let other = tmp.path().join("other");
        let transport = bind_at(&other, Some(vec![euid().wrapping_add(1)]))
            .await
            .unwrap();
        let counters = transport.counters();
        let mut incoming = transport.into_incoming();
        let mut client = UnixStream::connect(&other).await.unwrap();
        let mut buf = [0; 8];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0))), "not closed: {read:?}");
        eventually("the refusal is counted", || {
            counters.snapshot().unix_peers_refused == 1
        })
        .await;
        assert!(
            incoming.rx.try_recv().is_err(),
            "a refused peer reached Incoming"
        );
    }
}
