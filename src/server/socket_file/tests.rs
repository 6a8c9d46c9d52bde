//! Socket-file rules, over real sockets and processes.

use super::*;

use std::os::unix::fs::symlink;
use std::sync::{Arc, Barrier};

use tempfile::TempDir;

/// The names in `dir`, sorted: what a bind left behind.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Whether a client connecting at `path` reaches `listener`.
fn accepts(listener: &UnixListener, path: &Path) -> bool {
    // A Unix connect returns once queued, so the non-blocking accept finds it at once.
    UnixStream::connect(path).is_ok() && listener.accept().is_ok()
}

/// Leaves a socket file at `path` that no one listens on, as a crashed server does.
fn stale_socket(path: &Path) {
    drop(UnixListener::bind(path).unwrap());
    assert!(fs::symlink_metadata(path).unwrap().file_type().is_socket());
}

/// The permission bits, as a client's `connect` checks them.
fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The error and its sources, as a reporter prints them.
fn chain(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Asserts a refusal: a bind error that names `path`, with a source of `kind`.
fn assert_refused(err: &Error, path: &Path, kind: ErrorKind) {
    assert!(err.is_bind(), "{err}");
    assert!(chain(err).contains(&format!("{path:?}")), "{err}");
    let source = std::error::Error::source(err).and_then(|s| s.downcast_ref::<io::Error>());
    assert_eq!(source.map(io::Error::kind), Some(kind), "{err}");
}

/// The default case end to end: mode, socket type, non-blocking, reachable, no leftovers.
#[test]
fn binds_with_mode_0600_and_listens() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("x.sock");
    let (listener, file) = bind(&path, 0o600).unwrap();
    assert_eq!(file.path(), path);
    assert_eq!(mode_of(&path), 0o600);
    assert!(fs::symlink_metadata(&path).unwrap().file_type().is_socket());
    assert_eq!(listener.accept().unwrap_err().kind(), ErrorKind::WouldBlock);
    assert!(accepts(&listener, &path));
    assert_eq!(entries(tmp.path()), ["x.sock"]);
}

/// Group access must be grantable, not only taken away.
#[test]
fn binds_with_requested_mode() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("x.sock");
    let (listener, _file) = bind(&path, 0o660).unwrap();
    assert_eq!(mode_of(&path), 0o660);
    assert!(accepts(&listener, &path));
}

/// Runs itself again under a permissive and a strict umask (std cannot set one, `sh` can):
/// the socket must get exactly the mode asked for under both.
#[test]
fn mode_does_not_depend_on_umask() {
    const CHILD: &str = "DIARRHOEA_SOCKET_FILE_UMASK_CHILD";
    if std::env::var_os(CHILD).is_some() {
        for mode in [0o600, 0o660, 0o666] {
            let tmp = TempDir::new().unwrap();
            let path = tmp.path().join("x.sock");
            let (_listener, _file) = bind(&path, mode).unwrap();
            assert_eq!(mode_of(&path), mode);
        }
        return;
    }
    let (_, module) = module_path!().split_once("::").unwrap();
    let test = format!("{module}::mode_does_not_depend_on_umask");
    for umask in ["000", "077"] {
        let out = process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umask {umask} && exec \"$0\" --exact \"$1\" --test-threads=1"
            ))
            .arg(std::env::current_exe().unwrap())
            .arg(&test)
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        // "1 passed": the child found this test, so its success means something.
        assert!(
            out.status.success() && stdout.contains(" 1 passed"),
            "umask {umask}: {stdout}"
        );
    }
}

/// Paths with no file name to link cannot be bound, and must say why.
#[test]
fn empty_path_or_no_file_name_is_refused() {
    for path in ["", "/", "a/.."] {
        let err = bind(Path::new(path), 0o600).unwrap_err();
        assert_refused(&err, Path::new(path), ErrorKind::InvalidInput);
    }
}

/// One byte past `sun_path` is refused up front, not truncated or half-created.
#[test]
fn too_long_path_is_refused_before_touching_anything() {
    let tmp = TempDir::new().unwrap();
    let dir_len = tmp.path().as_os_str().len();
    let path = tmp.path().join("x".repeat(MAX_PATH_LEN - dir_len)); // one byte too many
    assert_eq!(path.as_os_str().len(), MAX_PATH_LEN + 1);
    let err = bind(&path, 0o600).unwrap_err();
    assert_refused(&err, &path, ErrorKind::InvalidFilename);
    assert!(chain(&err).contains(&MAX_PATH_LEN.to_string()), "{err}");
    assert!(entries(tmp.path()).is_empty());
}

/// The limit is not off by one the other way.
#[test]
fn longest_path_that_fits_binds() {
    let tmp = TempDir::new().unwrap();
    let dir_len = tmp.path().as_os_str().len();
    let path = tmp.path().join("x".repeat(MAX_PATH_LEN - dir_len - 1));
    assert_eq!(path.as_os_str().len(), MAX_PATH_LEN);
    let (listener, _file) = bind(&path, 0o600).unwrap();
    assert!(accepts(&listener, &path));
}

/// A path that fits whose staging socket does not gets its own clear refusal.
#[test]
fn too_long_temporary_path_is_refused_before_touching_anything() {
    let tmp = TempDir::new().unwrap();
    // A directory that leaves room for "/x.sock" but not for the staging directory and
    // socket beside it, "/.dh01234567/s".
    let dir_len = tmp.path().as_os_str().len();
    let dir = tmp
        .path()
        .join("d".repeat(MAX_PATH_LEN - dir_len - "/x.sock".len() - 1));
    fs::create_dir(&dir).unwrap();
    let path = dir.join("x.sock");
    assert_eq!(path.as_os_str().len(), MAX_PATH_LEN);
    let err = bind(&path, 0o600).unwrap_err();
    assert_refused(&err, &path, ErrorKind::InvalidFilename);
    assert!(chain(&err).contains("temporary"), "{err}");
    assert!(chain(&err).contains(&MAX_PATH_LEN.to_string()), "{err}");
    assert!(entries(&dir).is_empty());
}

/// The staging socket's limit is not off by one the other way either.
#[test]
fn longest_temporary_path_that_fits_binds() {
    let tmp = TempDir::new().unwrap();
    let dir_len = tmp.path().as_os_str().len();
    // The staging socket beside the path, "/.dh01234567/s", takes exactly MAX_PATH_LEN.
    let dir = tmp
        .path()
        .join("d".repeat(MAX_PATH_LEN - dir_len - "/.dh01234567/s".len() - 1));
    fs::create_dir(&dir).unwrap();
    let path = dir.join("x.sock");
    let (listener, _file) = bind(&path, 0o600).unwrap();
    assert!(accepts(&listener, &path));
}

/// OS failures stay I/O errors, but still say which path.
#[test]
fn missing_directory_is_an_io_error_naming_the_path() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("missing").join("x.sock");
    let err = bind(&path, 0o600).unwrap_err();
    assert!(err.is_io(), "{err}");
    assert!(chain(&err).contains(&format!("{path:?}")), "{err}");
    assert!(entries(tmp.path()).is_empty());
}

/// A crashed server's leftover must not block a restart.
#[test]
fn replaces_stale_socket() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("x.sock");
    stale_socket(&path);
    let (listener, _file) = bind(&path, 0o600).unwrap();
    assert!(accepts(&listener, &path));
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(entries(tmp.path()), ["x.sock"]);
}

/// A running server is never taken over, and the probe does not harm it.
#[test]
fn refuses_live_socket_which_keeps_working() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("x.sock");
    let live = UnixListener::bind(&path).unwrap();
    let err = bind(&path, 0o600).unwrap_err();
    assert_refused(&err, &path, ErrorKind::AddrInUse);
    assert!(chain(&err).contains("live server"), "{err}");
    // The probe's connection, then ours.
    live.accept().unwrap();
    UnixStream::connect(&path).unwrap();
    live.accept().unwrap();
    assert_eq!(entries(tmp.path()), ["x.sock"]);
}

/// The same holds between two binds in one process.
#[test]
fn refuses_our_own_live_socket() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("x.sock");
    let (listener, _file) = bind(&path, 0o600).unwrap();
    let err = bind(&path, 0o600).unwrap_err();
    assert_refused(&err, &path, ErrorKind::AddrInUse);
    listener.accept().unwrap(); // the probe
    assert!(accepts(&listener, &path));
    assert_eq!(entries(tmp.path()), ["x.sock"]);
}

/// A socket that refuses the probe for another reason than "no one listens" (here a live
/// datagram socket: a stream connect gets EPROTOTYPE) may be in use: it is left alone.
#[test]
fn leaves_a_socket_it_cannot_judge_untouched() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("x.sock");
    let live = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let err = bind(&path, 0o600).unwrap_err();
    assert!(err.is_bind(), "{err}");
    assert!(chain(&err).contains("cannot tell"), "{err}");
    assert!(chain(&err).contains(&format!("{path:?}")), "{err}");
    let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
    sender.send_to(b"still here", &path).unwrap();
    let mut buf = [0; 16];
    let n = live.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"still here");
    assert_eq!(entries(tmp.path()), ["x.sock"]);
}

/// A mistyped path must never cost a user their file.
#[test]
fn leaves_regular_file_untouched() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("x.sock");
    fs::write(&path, "precious").unwrap();
    let err = bind(&path, 0o600).unwrap_err();
    assert_refused(&err, &path, ErrorKind::AlreadyExists);
    assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
    assert_eq!(entries(tmp.path()), ["x.sock"]);
}

/// Nor their directory.
#[test]
fn leaves_directory_untouched() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("x.sock");
    fs::create_dir(&path).unwrap();
    fs::write(path.join("inner"), "precious").unwrap();
    let err = bind(&path, 0o600).unwrap_err();
    assert_refused(&err, &path, ErrorKind::AlreadyExists);
    assert_eq!(fs::read_to_string(path.join("inner")).unwrap(), "precious");
    assert_eq!(entries(tmp.path()), ["x.sock"]);
}

/// A symlink is judged itself, never followed, even to a socket.
#[test]
fn leaves_symlink_to_live_socket_untouched() {
    let tmp = TempDir::new().unwrap();
    let target = tmp.path().join("live.sock");
    let live = UnixListener::bind(&target).unwrap();
    let path = tmp.path().join("x.sock");
    symlink(&target, &path).unwrap();
    let err = bind(&path, 0o600).unwrap_err();
    assert_refused(&err, &path, ErrorKind::AlreadyExists);
    assert_eq!(fs::read_link(&path).unwrap(), target);
    assert!(accepts(&live, &path));
    assert_eq!(entries(tmp.path()), ["live.sock", "x.sock"]);
}

/// Following it would unlink the symlink for a stale socket elsewhere.
#[test]
fn leaves_symlink_to_stale_socket_untouched() {
    let tmp = TempDir::new().unwrap();
    let target = tmp.path().join("stale.sock");
    stale_socket(&target);
    let path = tmp.path().join("x.sock");
    symlink(&target, &path).unwrap();
    let err = bind(&path, 0o600).unwrap_err();
    assert_refused(&err, &path, ErrorKind::AlreadyExists);
    assert_eq!(fs::read_link(&path).unwrap(), target);
    assert!(fs::symlink_metadata(&target)
        .unwrap()
        .file_type()
        .is_socket());
    assert_eq!(entries(tmp.path()), ["stale.sock", "x.sock"]);
}

/// A dangling symlink is still something at the path.
#[test]
fn leaves_dangling_symlink_untouched() {
    let tmp = TempDir::new().unwrap();
    let target = tmp.path().join("nowhere");
    let path = tmp.path().join("x.sock");
    symlink(&target, &path).unwrap();
    let err = bind(&path, 0o600).unwrap_err();
    assert_refused(&err, &path, ErrorKind::AlreadyExists);
    assert_eq!(fs::read_link(&path).unwrap(), target);
    assert_eq!(entries(tmp.path()), ["x.sock"]);
}

/// A server that stops cleans up after itself.
#[test]
fn drop_removes_socket_file() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("x.sock");
    let (_listener, file) = bind(&path, 0o600).unwrap();
    drop(file);
    assert!(entries(tmp.path()).is_empty());
}

/// `remove` is the explicit spelling of drop.
#[test]
fn remove_removes_socket_file() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("x.sock");
    let (_listener, file) = bind(&path, 0o600).unwrap();
    file.remove();
    assert!(entries(tmp.path()).is_empty());
}

/// Another server that took the path over keeps its socket.
#[test]
fn drop_spares_socket_that_replaced_ours() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("x.sock");
    let (_listener, file) = bind(&path, 0o600).unwrap();
    fs::remove_file(&path).unwrap();
    let other = UnixListener::bind(&path).unwrap();
    drop(file);
    assert!(accepts(&other, &path));
}

/// Whatever replaced our socket is not ours to remove.
#[test]
fn drop_spares_file_that_replaced_ours() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("x.sock");
    let (_listener, file) = bind(&path, 0o600).unwrap();
    fs::remove_file(&path).unwrap();
    fs::write(&path, "precious").unwrap();
    drop(file);
    assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
}

/// Stale replacement relies on the lock excluding other binders, also for a bare file name.
#[test]
fn directory_lock_is_exclusive() {
    let tmp = TempDir::new().unwrap();
    let lock = lock_directory(&tmp.path().join("x.sock")).unwrap();
    let other = File::open(tmp.path()).unwrap();
    assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
    drop(lock);
    other.try_lock().unwrap();
    // A bare file name is in the working directory.
    assert!(lock_directory(Path::new("x.sock")).is_some());
}

/// Binds `path` from 20 threads at once and checks that exactly one wins, still listens,
/// and is all that is left in `dir`.
fn race(dir: &Path, path: &Path) {
    const THREADS: usize = 20;
    let barrier = Arc::new(Barrier::new(THREADS));
    let results: Vec<_> = (0..THREADS)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            let path = path.to_owned();
            thread::spawn(move || {
                barrier.wait();
                bind(&path, 0o600)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .collect();
    let mut winners = Vec::new();
    for result in results {
        match result {
            Ok(won) => winners.push(won),
            Err(err) => {
                assert!(err.is_bind(), "{err}");
                assert!(chain(&err).contains(&format!("{path:?}")), "{err}");
            }
        }
    }
    assert_eq!(winners.len(), 1);
    let (listener, _file) = &winners[0];
    // Drain the losers' probes, then connect afresh.
    while listener.accept().is_ok() {}
    assert!(accepts(listener, path));
    assert_eq!(mode_of(path), 0o600);
    assert_eq!(entries(dir), ["x.sock"]);
}

/// Simultaneous binds on a free path: one winner, clean errors for the rest.
#[test]
fn concurrent_binds_have_one_winner() {
    for _ in 0..5 {
        let tmp = TempDir::new().unwrap();
        let path = tmp.path().join("x.sock");
        race(tmp.path(), &path);
    }
}

/// Simultaneous replacements of one stale socket: no one unlinks the winner's socket.
#[test]
fn concurrent_binds_over_stale_socket_have_one_winner() {
    for _ in 0..20 {
        let tmp = TempDir::new().unwrap();
        let path = tmp.path().join("x.sock");
        stale_socket(&path);
        race(tmp.path(), &path);
    }
}
