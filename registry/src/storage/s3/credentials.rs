//! Credentials from files (a mounted Kubernetes Secret): re-read when a file's
//! time changes, so a rotated Secret is used without a restart. Kubernetes
//! replaces a mounted Secret's files atomically through a symlink swap.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use object_store::CredentialProvider;
use object_store::aws::AwsCredential;

#[derive(Debug)]
pub struct Files {
    dir: PathBuf,
    /// The credential and the files' latest time when it was read.
    current: Mutex<Option<(SystemTime, Arc<AwsCredential>)>>,
}

const KEY_ID: &str = "accessKeyId";
const SECRET: &str = "secretAccessKey";
const TOKEN: &str = "sessionToken";

impl Files {
    pub fn new(dir: PathBuf) -> Self {
        Files { dir, current: Mutex::new(None) }
    }

    /// The newest time of the files (following symlinks), or the epoch.
    fn stamp(&self) -> SystemTime {
        [KEY_ID, SECRET, TOKEN]
            .iter()
            .filter_map(|name| std::fs::metadata(self.dir.join(name)).and_then(|m| m.modified()).ok())
            .max()
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }

    fn read(&self, name: &str) -> std::io::Result<String> {
        Ok(std::fs::read_to_string(self.dir.join(name))?.trim().to_owned())
    }

    fn load(&self) -> Result<AwsCredential, object_store::Error> {
        let failed = |e: std::io::Error| object_store::Error::Generic {
            store: "S3",
            source: format!("reading credentials from {}: {e}", self.dir.display()).into(),
        };
        Ok(AwsCredential {
            key_id: self.read(KEY_ID).map_err(failed)?,
            secret_key: self.read(SECRET).map_err(failed)?,
            token: self.read(TOKEN).ok().filter(|t| !t.is_empty()),
        })
    }
}

#[async_trait]
impl CredentialProvider for Files {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let stamp = self.stamp();
        if let Some((seen, credential)) = self.current.lock().unwrap().as_ref()
            && *seen == stamp
        {
            return Ok(credential.clone());
        }
        let credential = Arc::new(self.load()?);
        *self.current.lock().unwrap() = Some((stamp, credential.clone()));
        Ok(credential)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rotated_files_are_read_again() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_ID), "first\n").unwrap();
        std::fs::write(dir.path().join(SECRET), "secret").unwrap();
        let files = Files::new(dir.path().to_path_buf());
        let first = files.get_credential().await.unwrap();
        assert_eq!((first.key_id.as_str(), first.token.as_deref()), ("first", None));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dir.path().join(KEY_ID), "second").unwrap();
        std::fs::write(dir.path().join(TOKEN), "token").unwrap();
        let second = files.get_credential().await.unwrap();
        assert_eq!((second.key_id.as_str(), second.token.as_deref()), ("second", Some("token")));
    }

    #[tokio::test]
    async fn a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Files::new(dir.path().to_path_buf()).get_credential().await.is_err());
    }
}
