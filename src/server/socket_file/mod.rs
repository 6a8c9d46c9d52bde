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
    #[cfg(test)]
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
    bind_file(path, mode).map_err(|e| e.with_context(format!("bind {path:?}")))
}

fn bind_file(path: &Path, mode: u32) -> Result<(UnixListener, SocketFile), Error> {
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
    let listener = UnixListener::bind(&staging.socket).map_err(Error::io)?;
    fs::set_permissions(&staging.socket, Permissions::from_mode(mode)).map_err(Error::io)?;
    // The inode the link will share, read where no one else can swap it.
    let meta = fs::symlink_metadata(&staging.socket).map_err(Error::io)?;
    link_into_place(&staging.socket, path)?;
    let file = SocketFile {
        path: path.to_owned(),
        inode: Inode::of(&meta),
    };
    listener.set_nonblocking(true).map_err(Error::io)?;
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
            .map_err(Error::io)?;
        let staging = Staging { dir, socket };
        // The umask may have taken bits from the owner, who needs them all to bind inside.
        fs::set_permissions(&staging.dir, Permissions::from_mode(0o700)).map_err(Error::io)?;
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
            Err(e) => return Err(Error::io(e)),
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
        Err(e) => return Err(Error::io(e)),
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
            unlink_if_unchanged(path, Inode::of(&probed)).map_err(Error::io)
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

#[cfg(test)]
mod tests;
