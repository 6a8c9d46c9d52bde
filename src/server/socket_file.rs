//! TEMPORARY STUB
use crate::error::Error;
use std::path::{Path, PathBuf};
pub(crate) struct SocketFile {
    path: PathBuf,
}
impl SocketFile {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}
impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
pub(crate) fn bind(
    path: &Path,
    _mode: u32,
) -> Result<(std::os::unix::net::UnixListener, SocketFile), Error> {
    let l = std::os::unix::net::UnixListener::bind(path).map_err(Error::io)?;
    l.set_nonblocking(true).map_err(Error::io)?;
    Ok((
        l,
        SocketFile {
            path: path.to_owned(),
        },
    ))
}
