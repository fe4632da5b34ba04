//! Files written whole or not at all, and small files read no further than they may go.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A file being written beside its destination, renamed into place by [`PendingFile::persist`]
/// and removed if dropped before that: a reader never sees half a file, and a failed write
/// leaves the old one.
pub struct PendingFile {
    /// The destination as the caller named it, for messages.
    named: PathBuf,
    /// Where the file is renamed to: the destination, or the file a symbolic link there
    /// points to, so that the link stays.
    destination: PathBuf,
    temporary: PathBuf,
    persisted: bool,
}

impl PendingFile {
    /// Creates the temporary file, so a destination that cannot be written fails here, before
    /// any other work. Temporary files for the same destination left by a process that was
    /// killed (and an SQLite copy's `-wal`, `-shm` and `-journal` beside them) are removed. A
    /// destination that exists and is not a file (a directory, a FIFO, a device) is refused:
    /// renaming over it would replace it.
    pub fn create(destination: &Path) -> Result<PendingFile> {
        let named = destination.to_path_buf();
        if let Some(kind) = not_a_file(destination) {
            return Err(Error::Write {
                path: named.display().to_string(),
                source: io::Error::other(format!("it is {kind}, not a file")),
            });
        }
        let destination = std::fs::canonicalize(destination).unwrap_or(named.clone());
        remove_abandoned(&destination);
        let mut temporary = destination.as_os_str().to_owned();
        temporary.push(format!(".tmp-{}", std::process::id()));
        let pending = PendingFile {
            named,
            destination,
            temporary: PathBuf::from(temporary),
            persisted: false,
        };
        File::create(&pending.temporary).map_err(|e| pending.error(e))?;
        Ok(pending)
    }

    /// Replaces what the pending file holds with `contents`, flushed to disk.
    pub fn write(&self, contents: &[u8]) -> Result<()> {
        File::create(&self.temporary)
            .and_then(|mut file| file.write_all(contents).and_then(|()| file.sync_all()))
            .map_err(|e| self.error(e))
    }

    pub fn path(&self) -> &Path {
        &self.temporary
    }

    /// Renames the file into place.
    pub fn persist(mut self) -> Result<()> {
        std::fs::rename(&self.temporary, &self.destination).map_err(|e| self.error(e))?;
        self.persisted = true;
        Ok(())
    }

    fn error(&self, source: io::Error) -> Error {
        Error::Write {
            path: self.named.display().to_string(),
            source,
        }
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.persisted {
            // Best effort: the error that stopped the write is the one worth reporting.
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// Removes `DESTINATION.tmp-PID` files, and their SQLite companions, whose process no longer
/// runs. A file whose PID a live process has taken since is left for a later run.
fn remove_abandoned(destination: &Path) {
    let (Some(directory), Some(name)) = (destination.parent(), destination.file_name()) else {
        return;
    };
    let directory = if directory.as_os_str().is_empty() {
        Path::new(".")
    } else {
        directory
    };
    let prefix = format!("{}.tmp-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(directory) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let pid = ["-wal", "-shm", "-journal"]
            .iter()
            .find_map(|suffix| rest.strip_suffix(suffix))
            .unwrap_or(rest);
        let abandoned = !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && !Path::new("/proc").join(pid).exists();
        if abandoned {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Writes `contents` to `path` atomically (see [`PendingFile`]); to a FIFO or a device
/// (`/dev/stdout`, a pipe to another program) as it is, since there is nothing to rename.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let streamed = std::fs::metadata(path).is_ok_and(|found| !found.is_file() && !found.is_dir());
    if streamed {
        return std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut stream| stream.write_all(contents))
            .map_err(|source| Error::Write {
                path: path.display().to_string(),
                source,
            });
    }
    let pending = PendingFile::create(path)?;
    pending.write(contents)?;
    pending.persist()
}

/// The most a file small by nature is read to: a key in PEM is under 200 bytes, a checkpoint
/// about 100.
pub const SMALL_FILE_BYTES: u64 = 4096;

/// The text of a file that is small by nature (a key, a checkpoint), `None` if it holds more
/// than [`SMALL_FILE_BYTES`]: a path given by mistake (the database, `/dev/zero`) is refused
/// having read one byte more, not read whole into memory.
pub fn read_small_text(path: &Path) -> Result<Option<String>> {
    let limit = SMALL_FILE_BYTES;
    let read_error = |source| Error::Read {
        path: path.display().to_string(),
        source,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|file| file.take(limit + 1).read_to_end(&mut bytes))
        .map_err(read_error)?;
    if bytes.len() as u64 > limit {
        return Ok(None);
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|e| read_error(io::Error::new(io::ErrorKind::InvalidData, e)))
}

/// What `path` is when it exists and is not a file (symbolic links followed): a store or a
/// heads file given a FIFO or a device would block, or lose what is written to it. SQLite
/// takes either for a file, then fails with "disk I/O error", writes a journal beside
/// `/dev/null`, or reads `/dev/zero` for ever.
pub fn not_a_file(path: &Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::metadata(path).ok()?.file_type();
    if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("an unknown kind of file")
    }
}
