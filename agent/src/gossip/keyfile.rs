//! The cluster key file: one base64 key of 32 bytes per line, the first one seals what this node
//! sends, every one opens what it receives. Blank lines and `#` comments are ignored. Errors
//! name the line, never its content: key material must not reach logs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::seal::{KEY_LEN, Keyring, KeyringError};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyFileError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} line {line}: not a base64 key of {KEY_LEN} bytes (make one with `weft-agent keygen`)")]
    BadKey { path: PathBuf, line: usize },
    #[error("{path}: {source}")]
    Keyring { path: PathBuf, source: KeyringError },
}

/// The keys in a key file's text, in order.
pub fn parse(path: &Path, text: &str) -> Result<Keyring, KeyFileError> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = STANDARD
            .decode(line)
            .ok()
            .and_then(|bytes| <[u8; KEY_LEN]>::try_from(bytes).ok())
            .ok_or_else(|| KeyFileError::BadKey { path: path.to_path_buf(), line: i + 1 })?;
        keys.push(key);
    }
    Keyring::new(&keys).map_err(|source| KeyFileError::Keyring { path: path.to_path_buf(), source })
}

/// Reads the key file; warns when other users can read it.
fn read(path: &Path) -> Result<(String, Keyring), KeyFileError> {
    let read_error = |e: std::io::Error| KeyFileError::Read { path: path.to_path_buf(), reason: e.to_string() };
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    let mode = std::fs::metadata(path).map_err(read_error)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the cluster key file is readable by other users; chmod 600 it");
    }
    let ring = parse(path, &text)?;
    Ok((text, ring))
}

/// How often the key file is checked for changes: a Kubernetes Secret update arrives as a new
/// file with no signal.
const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// Keeps a keyring current with its file: re-read on SIGHUP and every [`RELOAD_CHECK`]. A file
/// that stops parsing keeps the last good keyring in use, and says so.
pub struct KeyWatch {
    path: PathBuf,
    text: String,
    keys: watch::Sender<Arc<Keyring>>,
}

impl KeyWatch {
    /// Reads the key file once: an unusable file at start is an error, not a warning.
    pub fn load(path: &Path) -> Result<(KeyWatch, watch::Receiver<Arc<Keyring>>), KeyFileError> {
        let (text, ring) = read(path)?;
        let (keys, receiver) = watch::channel(Arc::new(ring));
        Ok((KeyWatch { path: path.to_path_buf(), text, keys }, receiver))
    }

    pub fn current(&self) -> Arc<Keyring> {
        self.keys.borrow().clone()
    }

    /// Runs until the process ends, calling `changed` with each new keyring.
    pub async fn run(mut self, changed: impl Fn(&Keyring, bool) + Send) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP; the key file is still re-read every 5 s");
                None
            }
        };
        let mut tick = tokio::time::interval(RELOAD_CHECK);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => {
                    tracing::info!("SIGHUP: re-reading the cluster key file");
                }
            }
            match read(&self.path) {
                Ok((text, _)) if text == self.text => {}
                Ok((text, ring)) => {
                    tracing::info!(primary = %ring.primary(), keys = ?ring, "cluster key file changed: keyring updated");
                    self.text = text;
                    changed(&ring, true);
                    self.keys.send_replace(Arc::new(ring));
                }
                Err(e) => {
                    tracing::error!(error = %e, in_use = ?self.current(), "cannot use the cluster key file; keeping the keys in use");
                    changed(&self.current(), false);
                }
            }
        }
    }
}

/// A new random key, as a key file line. (`rand`'s thread generator is a CSPRNG seeded from the
/// operating system.)
pub fn generate() -> String {
    STANDARD.encode(rand::random::<[u8; KEY_LEN]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(lines: &[&str]) -> String {
        lines.join("\n")
    }

    #[test]
    fn keys_in_order_with_comments_and_blank_lines_ignored() {
        let (a, b) = (generate(), generate());
        let ring = parse(Path::new("k"), &file(&["# new key first", "", &format!("  {a}  "), &b, ""])).unwrap();
        let ids = ring.ids();
        assert_eq!(ids.len(), 2);
        let only_b = parse(Path::new("k"), &b).unwrap();
        assert_eq!(ids[1], only_b.primary());
        assert_ne!(ids[0], ids[1]);
    }

    #[test]
    fn bad_lines_are_named_without_their_content() {
        let short = STANDARD.encode([7u8; 16]);
        for (text, line) in [
            (file(&[&generate(), "not base64!"]), 2),
            (file(&["#", &short]), 2),
            (file(&[&STANDARD.encode([7u8; 33])]), 1),
        ] {
            let err = parse(Path::new("/etc/weft/key"), &text).unwrap_err();
            assert_eq!(err, KeyFileError::BadKey { path: "/etc/weft/key".into(), line });
            assert!(!err.to_string().contains(&short), "{err}");
        }
    }

    #[test]
    fn empty_and_repeated_keys_are_refused() {
        let key = generate();
        assert!(matches!(
            parse(Path::new("k"), "# nothing\n"),
            Err(KeyFileError::Keyring { source: KeyringError::Empty, .. })
        ));
        assert!(matches!(
            parse(Path::new("k"), &file(&[&key, &key])),
            Err(KeyFileError::Keyring { source: KeyringError::Duplicate(1, 2), .. })
        ));
    }

    #[test]
    fn generated_keys_are_valid_and_different() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(parse(Path::new("k"), &file(&[&a, &b])).is_ok());
    }
}
