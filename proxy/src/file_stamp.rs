//! What identifies a version of a file on disk, for the watchers that re-read files
//! when they change (`jwks_file`, the `[proxy.tls]` pair): replaced by a rename or a
//! symlink swap (a new inode), or rewritten in place (length or mtime).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::SystemTime;

/// A file's identity and version; `None` where the file cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    /// The stamp of the file `path` names now (symlinks followed).
    pub fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: m.modified().ok(),
            len: m.len(),
            inode: m.ino(),
        })
    }
}
