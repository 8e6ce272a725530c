//! One process per directory, and appends on a failing or full disk.

use super::*;

#[test]
fn a_second_open_of_the_directory_fails_naming_it_and_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = open(dir.path());
    let error = open_with(dir.path(), JournalOptions::default()).unwrap_err();
    match &error {
        JournalError::Locked {
            dir: locked,
            holder,
        } => {
            assert_eq!(locked, dir.path());
            assert_eq!(*holder, Some(std::process::id()));
        }
        other => panic!("expected Locked, got {other}"),
    }
    assert!(error
        .to_string()
        .contains(&dir.path().display().to_string()));

    // Another process sees the lock too.
    let lock = dir.path().join(lock::LOCK_FILE);
    let try_lock = || {
        spawning(|| {
            Command::new("flock")
                .args(["-n", "-E", "42"])
                .arg(&lock)
                .arg("true")
                .status()
        })
        .expect("run flock(1)")
        .code()
    };
    assert_eq!(try_lock(), Some(42), "another process took the lock");
    drop(journal);
    assert_eq!(try_lock(), Some(0), "the lock outlived the journal");
    drop(open(dir.path()));
}

#[test]
fn a_killed_holder_leaves_no_stale_lock() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join(lock::LOCK_FILE);
    fs::write(&lock, "").unwrap();
    // The shell takes the lock on a descriptor of its own, then becomes
    // `sleep`: one process holds it, and SIGKILL ends that process.
    // Read inside `spawning`: once the holder speaks it has exec'd, so it
    // no longer holds copies of this process's descriptors.
    let (mut holder, line) = spawning(|| {
        let mut holder = Command::new("sh")
            .arg("-c")
            .arg("exec 9>>\"$0\" && flock -n 9 && echo locked && exec sleep 30")
            .arg(&lock)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        io::BufRead::read_line(
            &mut io::BufReader::new(holder.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        (holder, line)
    });
    assert_eq!(line, "locked\n");
    assert!(matches!(
        open_with(dir.path(), JournalOptions::default()),
        Err(JournalError::Locked { .. })
    ));
    holder.kill().unwrap(); // SIGKILL
    holder.wait().unwrap();
    open_with(dir.path(), JournalOptions::default()).expect("the lock died with its holder");
}

/// Collects health events.
fn health_log() -> (HealthCallback, Arc<Mutex<Vec<HealthEvent>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let callback: HealthCallback = Arc::new(move |event| sink.lock().unwrap().push(event));
    (callback, log)
}

#[test]
fn a_failing_disk_fails_the_batch_reports_once_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (callback, log) = health_log();
    let options = JournalOptions::default().on_health(callback);
    let (journal, _) = open_with(dir.path(), options).unwrap();
    journal.append(b"before").wait_blocking().unwrap();

    journal.inner.shared.faults.fail_syncs(1);
    let error = journal
        .append(b"lost to fsync")
        .wait_blocking()
        .unwrap_err();
    assert!(
        matches!(&error, JournalError::Io { source, .. } if source.raw_os_error() == Some(libc::EIO))
    );
    journal.inner.shared.faults.fail_writes(1);
    journal
        .append(b"lost to write")
        .wait_blocking()
        .unwrap_err();
    assert_eq!(log.lock().unwrap().len(), 1, "reported once");
    assert!(matches!(
        log.lock().unwrap()[0],
        HealthEvent::Failing { .. }
    ));

    journal.append(b"after").wait_blocking().unwrap();
    assert!(matches!(
        log.lock().unwrap()[1],
        HealthEvent::Recovered { failed_batches: 2 }
    ));
    drop(journal);
    let (_journal, recovered) = open(dir.path());
    assert_eq!(
        payloads(&recovered),
        vec![b"before".to_vec(), b"after".to_vec()],
        "a failed batch stays out of the file"
    );
}

/// A tiny tmpfs, unmounted on drop.
struct TinyDisk {
    /// Where it is mounted.
    mount: PathBuf,
    /// Keeps the mount point alive.
    _parent: tempfile::TempDir,
}

impl TinyDisk {
    /// Mounts one, if this process may (it runs as root here and in CI).
    fn mount(bytes: usize) -> Option<TinyDisk> {
        let parent = tempfile::tempdir().unwrap();
        let mount = parent.path().join("disk");
        fs::create_dir(&mount).unwrap();
        let status = spawning(|| {
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
                .arg(&mount)
                .stderr(std::process::Stdio::null())
                .status()
        })
        .ok()?;
        status.success().then_some(TinyDisk {
            mount,
            _parent: parent,
        })
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = spawning(|| Command::new("umount").arg(&self.mount).status());
    }
}

#[test]
fn a_full_disk_fails_appends_until_space_returns() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let disk = TinyDisk::mount(256 << 10).expect("mount a tmpfs");
    let dir = disk.mount.join("data");
    fs::create_dir(&dir).unwrap();
    let (callback, log) = health_log();
    let options = JournalOptions::default().on_health(callback);
    let (journal, _) = open_with(&dir, options).unwrap();
    journal.append(b"before").wait_blocking().unwrap();

    let filler = disk.mount.join("filler");
    let mut file = fs::File::create(&filler).unwrap();
    let chunk = vec![7u8; 4096];
    while io::Write::write_all(&mut file, &chunk).is_ok() {}
    drop(file);
    let big = vec![1u8; 64 << 10];
    let error = journal.append(&big).wait_blocking().unwrap_err();
    assert!(
        matches!(&error, JournalError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC)),
        "{error}"
    );
    assert_eq!(log.lock().unwrap().len(), 1);

    fs::remove_file(&filler).unwrap();
    journal.append(b"after").wait_blocking().unwrap();
    assert_eq!(log.lock().unwrap().len(), 2);
    drop(journal);
    let (journal, recovered) = open_with(&dir, JournalOptions::default()).unwrap();
    assert_eq!(
        payloads(&recovered),
        vec![b"before".to_vec(), b"after".to_vec()]
    );
    drop(journal);
    drop(disk);
}

#[test]
fn oversized_records_and_truncate_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions::default().max_pending_bytes(4096);
    let (journal, _) = open_with(dir.path(), options).unwrap();
    let error = journal.append(&[0; 5000]).wait_blocking().unwrap_err();
    assert!(matches!(error, JournalError::TooLarge { len: 5000, .. }));
    assert!("journal-1.log".parse::<TruncateAt>().is_err());
    assert!("../x:5".parse::<TruncateAt>().is_err());
    let at: TruncateAt = "journal-00000000000000000001.log:77".parse().unwrap();
    assert_eq!(at.offset, 77);
    let options = JournalOptions::default().truncate_at(Some("journal-9.log:1".parse().unwrap()));
    drop(journal);
    assert!(matches!(
        open_with(dir.path(), options),
        Err(JournalError::NoSuchSegment { .. })
    ));
}
