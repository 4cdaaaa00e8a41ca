//! Users from an htpasswd file: `name:$2y$...` lines, bcrypt only (as
//! Distribution). The file is re-read when its content changes, so a Secret
//! updated by the kubelet takes effect without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::cache;

/// How often the file is looked at again.
pub const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} line {line}: {reason}")]
    Invalid { path: PathBuf, line: usize, reason: &'static str },
}

/// User name to bcrypt hash.
#[derive(Debug, Default, PartialEq)]
pub struct Users(HashMap<String, String>);

impl Users {
    pub fn parse(path: &Path, text: &str) -> Result<Users, HtpasswdError> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let invalid = |reason| HtpasswdError::Invalid { path: path.into(), line: n + 1, reason };
            let (user, hash) = line.split_once(':').ok_or_else(|| invalid("no ':' between user and hash"))?;
            if user.is_empty() {
                return Err(invalid("empty user name"));
            }
            if !["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p)) {
                return Err(invalid("not a bcrypt hash (htpasswd -B makes one)"));
            }
            if users.insert(user.to_owned(), hash.to_owned()).is_some() {
                return Err(invalid("the user is listed twice"));
            }
        }
        Ok(Users(users))
    }

    pub fn hash(&self, user: &str) -> Option<&str> {
        self.0.get(user).map(String::as_str)
    }
}

pub struct Htpasswd {
    path: PathBuf,
    current: RwLock<(cache::Key, Arc<Users>)>,
    /// bcrypt checks at once: a flood of wrong passwords queues here (holding
    /// no thread) instead of filling the blocking pool that blob writes need.
    checks: tokio::sync::Semaphore,
}

impl Htpasswd {
    pub fn load(path: &Path) -> Result<Htpasswd, HtpasswdError> {
        let (fingerprint, users) = read(path)?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Htpasswd {
            path: path.into(),
            current: RwLock::new((fingerprint, Arc::new(users))),
            checks: tokio::sync::Semaphore::new(cores),
        })
    }

    pub fn users(&self) -> Arc<Users> {
        self.current.read().expect("htpasswd lock").1.clone()
    }

    /// Re-reads the file; true when the users changed. A file that became
    /// unreadable or invalid keeps the previous users (and is reported).
    pub fn reload(&self) -> Result<bool, HtpasswdError> {
        let (fingerprint, users) = read(&self.path)?;
        let mut current = self.current.write().expect("htpasswd lock");
        if current.0 == fingerprint {
            return Ok(false);
        }
        *current = (fingerprint, Arc::new(users));
        Ok(true)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks `password` against `hash`, a few at a time; `None` when no
    /// check slot frees up within 10 s (a flood of guesses).
    pub async fn verify(&self, password: String, hash: String) -> Option<bool> {
        let slot = tokio::time::timeout(std::time::Duration::from_secs(10), self.checks.acquire()).await;
        let Ok(Ok(_slot)) = slot else { return None };
        Some(verify(password, hash).await)
    }

    /// Identifies the file's current content: an answer computed against an
    /// older content must not be remembered.
    pub fn fingerprint(&self) -> cache::Key {
        self.current.read().expect("htpasswd lock").0
    }
}

fn read(path: &Path) -> Result<(cache::Key, Users), HtpasswdError> {
    let text = std::fs::read_to_string(path).map_err(|source| HtpasswdError::Read { path: path.into(), source })?;
    Ok((cache::key(&[text.as_bytes()]), Users::parse(path, &text)?))
}

/// Checks a password against a bcrypt hash on the blocking pool. Passwords
/// longer than bcrypt's 72 bytes are refused rather than silently truncated.
pub async fn verify(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || bcrypt::non_truncating_verify(password, &hash).unwrap_or(false))
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bcrypt_lines_only() {
        let p = Path::new("h");
        let users = Users::parse(p, "# users\n\nalice:$2y$05$abc\nbob:$2b$05$def\n").unwrap();
        assert_eq!(users.hash("alice"), Some("$2y$05$abc"));
        assert_eq!(users.hash("carol"), None);
        assert!(Users::parse(p, "alice:{SHA}xyz").is_err(), "SHA1 entries are refused");
        assert!(Users::parse(p, "alice").is_err());
        assert!(Users::parse(p, ":$2y$05$abc").is_err());
        assert!(Users::parse(p, "a:$2y$05$x\na:$2y$05$y").is_err(), "which line would count is ambiguous");
        assert!(Users::parse(p, "alice:$2y$05$abc\r\n").unwrap().hash("alice") == Some("$2y$05$abc"));
    }

    #[tokio::test]
    async fn verifies_and_refuses_long_passwords() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        assert!(verify("s3cret".into(), hash.clone()).await);
        assert!(!verify("s3cre".into(), hash).await);
        let long = "x".repeat(80);
        let truncated = bcrypt::hash(&long, 4).unwrap();
        assert!(!verify(format!("{}y", &long[..79]), truncated).await, "bytes past 72 must count");
    }

    #[test]
    fn reload_notices_changes_and_keeps_users_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, "a:$2y$05$x\n").unwrap();
        let h = Htpasswd::load(&path).unwrap();
        assert!(!h.reload().unwrap());
        std::fs::write(&path, "b:$2y$05$x\n").unwrap();
        assert!(h.reload().unwrap());
        assert!(h.users().hash("b").is_some() && h.users().hash("a").is_none());
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(h.reload().is_err());
        assert!(h.users().hash("b").is_some(), "an invalid file keeps the previous users");
    }
}
