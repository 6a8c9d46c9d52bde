//! The socket file's lifecycle: create it with its final permissions, replace it only when it is
//! stale, and remove it only while it is still ours.
//!
//! `bind(2)` creates the file with the umask's permissions and refuses an occupied path, so the
//! socket is bound in a private directory beside the path, given its mode there, and then
//! hard-linked into place: the link appears atomically, already with its final mode, and fails
//! if anything is at the path.
//!
//! Nothing is ever unlinked at the path but a socket whose inode we checked: a stale one that
//! refused a connection, or our own on drop. Check and unlink happen under a lock on the
//! directory, so two binders replacing the same stale socket cannot unlink each other's.

use std::fs::{self, DirBuilder, File, Metadata, Permissions, TryLockError};
use std::hash::{BuildHasher, RandomState};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process;
use std::thread;
use std::time::Duration;

use crate::error::Error;

/// The longest path a Unix socket address holds: `sun_path` less its NUL terminator.
#[cfg(any(target_os = "linux", target_os = "android"))]
const MAX_PATH_LEN: usize = 107;
/// The longest path a Unix socket address holds: `sun_path` less its NUL terminator.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const MAX_PATH_LEN: usize = 103;

/// How many times the link is tried while the path keeps being replaced under us.
const LINK_ATTEMPTS: usize = 3;

/// How many times to try the directory lock, a millisecond apart, before going on without it.
const LOCK_ATTEMPTS: usize = 100;

/// Guard for a socket file this process created.
///
/// Dropping it removes the path only while it is still our inode: a server that has taken the
/// path over since keeps its file.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    inode: Inode,
}

impl SocketFile {
    /// Where clients connect, for the server to report.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file now, as dropping does; says so at the call site.
    pub(crate) fn remove(self) {
        drop(self);
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // Best effort: there is no one to report a failure to.
        let _ = unlink_if_unchanged(&self.path, self.inode);
    }
}

/// A file's identity, to tell a socket we know from one that replaced it at the same path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Inode {
    dev: u64,
    ino: u64,
}

impl Inode {
    /// From `symlink_metadata`, so that a symlink is itself and not its target.
    fn of(meta: &Metadata) -> Self {
        Inode {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// Binds a listening socket at `path` with permission bits `mode` (e.g. `0o600`), which it has
/// from the moment it appears there.
///
/// A stale socket at `path` (no one listening) is replaced; a live one, or anything that is not
/// a socket, is refused and left untouched. The listener is non-blocking.
pub(crate) fn bind(path: &Path, mode: u32) -> Result<(UnixListener, SocketFile), Error> {
    let (Some(parent), Some(_)) = (path.parent(), path.file_name()) else {
        return Err(refuse(
            "path is empty or does not name a file",
            ErrorKind::InvalidInput,
            format!("{path:?}"),
        ));
    };
    let len = path.as_os_str().len();
    if len > MAX_PATH_LEN {
        return Err(refuse(
            "path too long for a Unix socket address",
            ErrorKind::InvalidFilename,
            format!("{path:?} is {len} bytes, at most {MAX_PATH_LEN} fit"),
        ));
    }

    let staging = Staging::create(parent, path)?;
    let listener = UnixListener::bind(&staging.socket).map_err(|e| io_error(path, e))?;
    fs::set_permissions(&staging.socket, Permissions::from_mode(mode))
        .map_err(|e| io_error(path, e))?;
    // The inode the link will share, read where no one else can swap it.
    let meta = fs::symlink_metadata(&staging.socket).map_err(|e| io_error(path, e))?;
    link_into_place(&staging.socket, path)?;
    let file = SocketFile {
        path: path.to_owned(),
        inode: Inode::of(&meta),
    };
    listener
        .set_nonblocking(true)
        .map_err(|e| io_error(path, e))?;
    Ok((listener, file))
}

/// A private directory beside the path, where the socket is bound and given its mode before
/// anyone else can reach it. Dropping it removes it and the socket's name in it, on success and
/// on every error alike.
struct Staging {
    dir: PathBuf,
    socket: PathBuf,
}

impl Staging {
    /// Creates the directory in `parent`, so the socket can be hard-linked to `path` (links do
    /// not cross file systems), under a short name, so its socket fits in an address too.
    fn create(parent: &Path, path: &Path) -> Result<Self, Error> {
        let name = format!(
            ".dh{:08x}",
            RandomState::new().hash_one(process::id()) as u32
        );
        let dir = parent.join(name);
        let socket = dir.join("s");
        let len = socket.as_os_str().len();
        if len > MAX_PATH_LEN {
            return Err(refuse(
                "temporary socket path beside the path too long for a Unix socket address",
                ErrorKind::InvalidFilename,
                format!(
                    "{socket:?}, beside {path:?}, is {len} bytes, at most {MAX_PATH_LEN} fit: \
                     use a directory with a shorter path"
                ),
            ));
        }
        DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io_error(path, e))?;
        let staging = Staging { dir, socket };
        // The umask may have taken bits from the owner, who needs them all to bind inside.
        fs::set_permissions(&staging.dir, Permissions::from_mode(0o700))
            .map_err(|e| io_error(path, e))?;
        Ok(staging)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // The socket may not exist yet; the directory is left behind only if emptying it failed.
        let _ = fs::remove_file(&self.socket);
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Links the staged socket at `path`, replacing a stale socket there but nothing else.
fn link_into_place(staged: &Path, path: &Path) -> Result<(), Error> {
    for _ in 0..LINK_ATTEMPTS {
        match fs::hard_link(staged, path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => remove_if_stale(path)?,
            Err(e) => return Err(io_error(path, e)),
        }
    }
    Err(refuse(
        "path kept being re-created while binding",
        ErrorKind::AddrInUse,
        format!("{path:?}: gave up after {LINK_ATTEMPTS} attempts"),
    ))
}

/// Removes what is at `path` if it is a socket no one listens on, and refuses anything else.
///
/// A path that vanished or changed meanwhile is left for the next link attempt to find.
fn remove_if_stale(path: &Path) -> Result<(), Error> {
    // Not `metadata`: a symlink must be judged itself, never followed.
    let probed = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(path, e)),
    };
    if !probed.file_type().is_socket() {
        return Err(refuse(
            "path exists and is not a socket",
            ErrorKind::AlreadyExists,
            format!("{path:?} is left untouched"),
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(refuse(
            "a live server is listening at the path",
            ErrorKind::AddrInUse,
            format!("{path:?} accepted a connection"),
        )),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            unlink_if_unchanged(path, Inode::of(&probed)).map_err(|e| io_error(path, e))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(refuse(
            "cannot tell whether the socket at the path is stale",
            e.kind(),
            format!("{path:?}: {e}"),
        )),
    }
}

/// Unlinks `path` if it is still `inode`: the socket we probed, or our own.
///
/// Checking and unlinking are two steps, so every unlink in this module holds an exclusive lock
/// on the directory: otherwise a binder that found the same stale socket could replace it with
/// a live one in between, and we would unlink that. Linking needs no lock, as it only fills an
/// empty path.
fn unlink_if_unchanged(path: &Path, inode: Inode) -> io::Result<()> {
    let _lock = lock_directory(path);
    if !fs::symlink_metadata(path).is_ok_and(|meta| Inode::of(&meta) == inode) {
        return Ok(());
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Locks the directory holding `path` against the unlinks of other binders, until the returned
/// file is dropped.
///
/// The lock is advisory and best effort: when the directory cannot be opened, or someone holds
/// the lock for long, we go on without it rather than fail or hang.
fn lock_directory(path: &Path) -> Option<File> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let dir = File::open(dir).ok()?;
    for _ in 0..LOCK_ATTEMPTS {
        match dir.try_lock() {
            Ok(()) => return Some(dir),
            Err(TryLockError::WouldBlock) => thread::sleep(Duration::from_millis(1)),
            Err(TryLockError::Error(_)) => return None,
        }
    }
    None
}

/// A refusal to use the path. `Error::bind` takes only a static description, so the source
/// carries the path and the details.
fn refuse(what: &'static str, kind: ErrorKind, detail: String) -> Error {
    Error::bind(what, io::Error::new(kind, detail))
}

/// An I/O error while binding, with the path it concerns and its kind kept.
fn io_error(path: &Path, e: io::Error) -> Error {
    Error::io(io::Error::new(e.kind(), format!("{path:?}: {e}")))
}

#[cfg(test)]
mod tests {
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

    /// Asserts a refusal: a bind error that names `path`, with a source of `kind`.
    fn assert_refused(err: &Error, path: &Path, kind: ErrorKind) {
        assert!(err.is_bind(), "{err}");
        assert!(err.to_string().contains(&format!("{path:?}")), "{err}");
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
        assert!(err.to_string().contains(&MAX_PATH_LEN.to_string()), "{err}");
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
        assert!(err.to_string().contains("temporary"), "{err}");
        assert!(err.to_string().contains(&MAX_PATH_LEN.to_string()), "{err}");
        assert!(entries(&dir).is_empty());
    }

    /// OS failures stay I/O errors, but still say which path.
    #[test]
    fn missing_directory_is_an_io_error_naming_the_path() {
        let tmp = TempDir::new().unwrap();
        let path = tmp.path().join("missing").join("x.sock");
        let err = bind(&path, 0o600).unwrap_err();
        assert!(err.is_io(), "{err}");
        assert!(err.to_string().contains(&format!("{path:?}")), "{err}");
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
        assert!(err.to_string().contains("live server"), "{err}");
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
                    assert!(err.to_string().contains(&format!("{path:?}")), "{err}");
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
}
