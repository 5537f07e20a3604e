//! Reading the files a config names (`admin.token_file`, `cluster.secret_file`) and the config
//! file itself, bounded: a file name pointing at a FIFO must not hang start-up, nor `/dev/zero`
//! fill the memory.

use std::fs::File;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use crate::excerpt::quote;

/// Largest token or key file: a few lines of base64.
pub(crate) const SECRET_FILE_LIMIT: u64 = 64 * 1024;
/// Largest config file. Generous (a generated file listing thousands of backends stays far
/// below it); the bound is there so reading always ends.
pub(crate) const CONFIG_FILE_LIMIT: u64 = 64 * 1024 * 1024;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    #[error("cannot read {}: {source}", quote(&.path.to_string_lossy()))]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a regular file", quote(&.path.to_string_lossy()))]
    NotRegular { path: PathBuf },
    #[error("{} is larger than {}", quote(&.path.to_string_lossy()), size(*.limit))]
    TooLarge { path: PathBuf, limit: u64 },
}

/// The text of a regular file of at most `limit` bytes. Anything else (FIFO, socket, device,
/// directory) is refused *before* it is opened: opening a FIFO blocks until a writer appears.
/// Symbolic links are followed (mounted secrets usually are links).
pub(crate) fn read_regular_file(path: &Path, limit: u64) -> Result<String, FileError> {
    let read_error = |source| FileError::Read {
        path: path.to_owned(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(read_error)?;
    if !metadata.is_file() {
        return Err(FileError::NotRegular {
            path: path.to_owned(),
        });
    }
    if metadata.len() > limit {
        return Err(FileError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    let file = File::open(path).map_err(read_error)?;
    // The name may have been pointed elsewhere since the check: look at what was opened.
    if !file.metadata().map_err(read_error)?.is_file() {
        return Err(FileError::NotRegular {
            path: path.to_owned(),
        });
    }
    read_limited(file, path, limit)
}

/// The text of the file at `path`, at most `limit` bytes. Unlike [`read_regular_file`] a pipe
/// is allowed (`hearsay check-config <(generate)`): the operator named it on the command line.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<String, FileError> {
    let file = File::open(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    read_limited(file, path, limit)
}

/// Reads at most `limit + 1` bytes, so a file still growing (or endless) is bounded too.
fn read_limited(file: File, path: &Path, limit: u64) -> Result<String, FileError> {
    let read_error = |source| FileError::Read {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    String::from_utf8(bytes).map_err(|_| {
        read_error(io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })
}

/// `64 KiB`, `64 MiB`, or bytes.
fn size(bytes: u64) -> String {
    match bytes {
        bytes if bytes >= 1 << 20 && bytes % (1 << 20) == 0 => format!("{} MiB", bytes >> 20),
        bytes if bytes >= 1 << 10 && bytes % (1 << 10) == 0 => format!("{} KiB", bytes >> 10),
        bytes => format!("{bytes} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("hearsay-config-file-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_small_regular_file_is_read() {
        let scratch = Scratch::new("small");
        let path = scratch.0.join("token");
        std::fs::write(&path, "0123456789abcdef\n").unwrap();
        assert_eq!(
            read_regular_file(&path, SECRET_FILE_LIMIT).unwrap(),
            "0123456789abcdef\n"
        );
        std::fs::write(&path, vec![b'a'; SECRET_FILE_LIMIT as usize]).unwrap();
        assert!(read_regular_file(&path, SECRET_FILE_LIMIT).is_ok());
    }

    #[test]
    fn devices_directories_and_fifos_are_refused_without_reading() {
        for path in ["/dev/zero", "/dev/null", "/tmp"] {
            let error = read_regular_file(Path::new(path), SECRET_FILE_LIMIT).unwrap_err();
            assert_eq!(error.to_string(), format!("{path:?} is not a regular file"));
        }
        // Opening a FIFO with no writer blocks: the check must come before the open (this test
        // would hang otherwise).
        let scratch = Scratch::new("fifo");
        let fifo = scratch.0.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|status| status.success()) {
            let error = read_regular_file(&fifo, SECRET_FILE_LIMIT).unwrap_err();
            assert!(matches!(error, FileError::NotRegular { .. }), "{error}");
        }
    }

    #[test]
    fn files_over_the_limit_are_refused() {
        let scratch = Scratch::new("large");
        let path = scratch.0.join("key");
        std::fs::write(&path, vec![b'a'; SECRET_FILE_LIMIT as usize + 1]).unwrap();
        let error = read_regular_file(&path, SECRET_FILE_LIMIT).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("{:?} is larger than 64 KiB", path.to_string_lossy())
        );
        // An endless stream stops at the limit too (the config file itself may be a pipe).
        let error = read_bounded(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert_eq!(error.to_string(), "\"/dev/zero\" is larger than 1 MiB");
    }

    #[test]
    fn unreadable_files_say_why() {
        let error = read_regular_file(Path::new("/nonexistent/key"), SECRET_FILE_LIMIT)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("cannot read \"/nonexistent/key\": "),
            "{error}"
        );
        let scratch = Scratch::new("utf8");
        let path = scratch.0.join("key");
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        let error = read_regular_file(&path, SECRET_FILE_LIMIT)
            .unwrap_err()
            .to_string();
        assert!(
            error.ends_with("stream did not contain valid UTF-8"),
            "{error}"
        );
    }
}
