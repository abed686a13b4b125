//! Small file helpers shared by the IPAM store, the node state file and the agent's conflist.
//!
//! Every file the plugin reads is input another process controls: it is opened without blocking
//! (a FIFO must not hang the plugin), must be a regular file (not /dev/zero), and is read through
//! a size limit.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::OFlag;

/// Opens `options` on `path` without blocking and makes sure a regular file was opened: opening a
/// FIFO for reading or writing would otherwise wait for the other end forever.
pub fn open_regular(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    let not_regular =
        |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("not a regular file but {what}"));
    let file = match options.custom_flags(OFlag::O_NONBLOCK.bits()).open(path) {
        // What a non-blocking open for writing says of a FIFO nobody reads (or a device without driver).
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENXIO as i32) => {
            return Err(not_regular("a FIFO or device with no one at the other end"));
        }
        other => other?,
    };
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(not_regular(describe(kind)));
    }
    Ok(file)
}

/// The whole content of the regular file at `path`, refusing more than `limit` bytes.
pub fn read_regular(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    read_limited(open_regular(path, OpenOptions::new().read(true))?, limit)
}

/// Everything `reader` yields, refusing more than `limit` bytes (stdin, a delegate's output).
pub fn read_limited(reader: impl Read, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(io::ErrorKind::FileTooLarge, format!("larger than {limit} bytes")));
    }
    Ok(bytes)
}

fn describe(kind: fs::FileType) -> &'static str {
    match kind {
        k if k.is_dir() => "a directory",
        k if k.is_fifo() => "a FIFO",
        k if k.is_char_device() => "a character device",
        k if k.is_block_device() => "a block device",
        k if k.is_socket() => "a socket",
        _ => "a special file",
    }
}

/// Replaces `path` with `bytes` so that readers see either the old or the new content, never a
/// torn file: write a temporary sibling, then rename it over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(".{}.tmp.{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut file = open_regular(&tmp, OpenOptions::new().write(true).create(true).truncate(true))?;
        file.write_all(bytes)?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temporary_file() {
        let dir = tempdir();
        let path = dir.join("f.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn fails_cleanly_when_the_directory_is_missing() {
        let path = std::env::temp_dir().join("weft-no-such-dir-xyz/f");
        assert!(write_atomic(&path, b"x").is_err());
    }

    #[test]
    fn reads_regular_files_within_the_limit_only() {
        let dir = tempdir();
        let path = dir.join("f");
        fs::write(&path, b"12345").unwrap();
        assert_eq!(read_regular(&path, 5).unwrap(), b"12345");
        assert_eq!(read_regular(&path, 4).unwrap_err().kind(), io::ErrorKind::FileTooLarge);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_fifos_devices_and_directories_without_blocking() {
        let dir = tempdir();
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        for path in [fifo.as_path(), Path::new("/dev/zero"), dir.as_path()] {
            let err = read_regular(path, 1024).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{}: {err}", path.display());
        }
        // Writing into a FIFO nobody reads fails at once instead of waiting for a reader.
        assert!(open_regular(&fifo, OpenOptions::new().write(true)).is_err());
        fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("weft-fsutil-{}-{}", std::process::id(), rand::random::<u32>()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
