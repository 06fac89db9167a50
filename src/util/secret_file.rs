//! Secret and token files, read by one rule: webhook secrets, the Web API token, bridge tokens,
//! the metrics listener's bearer tokens and the demo's secret. ASCII whitespace around the
//! content (the trailing newline of `echo`, a stray space) is not part of it; a file with
//! nothing else is refused, since an empty secret would accept anything. The content itself
//! never appears in an error.

use std::path::Path;

/// Why a secret or token file cannot be used; names neither the file's content nor the file
/// (the caller names the key and the file).
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("{0}")]
    Unreadable(#[from] std::io::Error),
    #[error("the file is empty")]
    Empty,
}

/// The secret in the file at `path`.
pub fn read(path: &Path) -> Result<Vec<u8>, SecretFileError> {
    let content = std::fs::read(path)?;
    let secret = content.trim_ascii();
    if secret.is_empty() {
        return Err(SecretFileError::Empty);
    }
    Ok(secret.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surrounding_whitespace_is_not_part_of_the_secret_and_nothing_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        for (content, secret) in [
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            (" s3 cret \t\n\n", "s3 cret"),
            ("s3cret", "s3cret"),
        ] {
            std::fs::write(&file, content).unwrap();
            assert_eq!(read(&file).unwrap(), secret.as_bytes(), "{content:?}");
        }
        for empty in ["", "\n", " \r\n\t"] {
            std::fs::write(&file, empty).unwrap();
            assert!(
                matches!(read(&file), Err(SecretFileError::Empty)),
                "{empty:?}"
            );
        }
        let missing = read(&dir.path().join("missing")).unwrap_err();
        assert!(
            matches!(missing, SecretFileError::Unreadable(_)),
            "{missing}"
        );
    }
}
