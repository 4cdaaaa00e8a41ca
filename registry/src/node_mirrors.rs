//! `berth-registry node-mirrors`: points a node's containerd at the
//! registry's pull-through mirrors. Run beside the node forwarder with the
//! node's `certs.d` directory (containerd's `config_path`) mounted, it writes
//! `<dir>/<image host>/hosts.toml` for each mirror, so containerd pulls
//! `docker.io/library/nginx` from `http://127.0.0.1:<port>/v2/docker.io/library/nginx/...`
//! and falls back to the upstream itself. On SIGTERM (the opt-in switched off,
//! the Registry deleted, a new pod template) it removes what it wrote.
//!
//! A node's `hosts.toml` files belong to whoever configured the node: a file
//! is only ever replaced or removed when its first line is this Registry's
//! marker. Files of another Registry, or written by hand, are logged and left.

use std::collections::BTreeSet;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::config::{MirrorConfig, validate_mirrors};

/// The file containerd reads in each host's directory.
pub const HOSTS_FILE: &str = "hosts.toml";
const MARKER_START: &str = "# Written by berth for Registry ";
const MARKER_END: &str = "; removed when the Registry stops mirroring.";

/// `<namespace>/<name>` of the Registry whose files these are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner(String);

impl FromStr for Owner {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // Kubernetes names: it goes into a comment line, so no newline or `;`.
        let ok = |part: &str| {
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
        };
        match s.split_once('/') {
            Some((ns, name)) if ok(ns) && ok(name) => Ok(Owner(s.to_owned())),
            _ => Err(format!("owner {s:?} must be <namespace>/<name>")),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One `--mirror <imageHost>=<prefix>=<url>`, checked as the registry checks
/// its configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeMirror(MirrorConfig);

impl FromStr for NodeMirror {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.splitn(3, '=');
        let (Some(host), Some(prefix), Some(url)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("mirror {s:?} must be <imageHost>=<prefix>=<url>"));
        };
        let mirror = MirrorConfig { image_host: Some(host.to_owned()), ..MirrorConfig::new(prefix, url) };
        validate_mirrors(std::slice::from_ref(&mirror))?;
        Ok(NodeMirror(mirror))
    }
}

impl NodeMirror {
    pub fn new(image_host: &str, prefix: &str, url: &str) -> Result<Self, String> {
        format!("{image_host}={prefix}={url}").parse()
    }

    fn host(&self) -> &str {
        self.0.image_host()
    }
}

/// What node-mirrors wrote, for its owner to remove again.
#[derive(Debug, Default)]
pub struct Written(Vec<PathBuf>);

impl Written {
    pub fn paths(&self) -> &[PathBuf] {
        &self.0
    }
}

/// The `hosts.toml` for one mirror: the node-access port on the node's
/// loopback first (where the forwarder listens), the upstream as `server`,
/// the fallback containerd uses when the mirror fails.
///
/// `override_path = true` makes the host's path the API root: containerd
/// appends `<repository>/manifests/<ref>` to `/v2/<prefix>` instead of
/// adding `/v2`, so the registry sees `<prefix>/<repository>`. For
/// `docker.io` the repository already has `library/` (containerd normalises
/// `nginx` to `docker.io/library/nginx`).
pub fn hosts_toml(owner: &Owner, port: u16, mirror: &NodeMirror) -> String {
    let m = &mirror.0;
    format!(
        "{MARKER_START}{owner}{MARKER_END}\nserver = \"{url}\"\n\n[host.\"http://127.0.0.1:{port}/v2/{prefix}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n",
        url = m.url.trim_end_matches('/'),
        prefix = m.prefix,
    )
}

/// Whose marker `text` starts with: `Some(owner)` for a file berth wrote.
fn marker_owner(text: &str) -> Option<&str> {
    text.lines().next()?.strip_prefix(MARKER_START)?.strip_suffix(MARKER_END)
}

/// Who may replace or remove the file at `path`.
enum Found {
    Absent,
    Ours,
    /// Another Registry's (with its owner) or nobody's (`None`): left alone.
    Foreign(Option<String>),
}

fn inspect(path: &Path, owner: &Owner) -> io::Result<Found> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Absent),
        Err(e) => return Err(e),
    };
    Ok(match marker_owner(&text) {
        Some(o) if o == owner.0 => Found::Ours,
        other => Found::Foreign(other.map(str::to_owned)),
    })
}

/// Replaces `path` with `content` in one step: containerd re-reads the file
/// on every pull and must never see half of it.
fn write_atomically(path: &Path, content: &str) -> io::Result<()> {
    let dir = path.parent().expect("a file in a host's directory");
    let mut tmp = tempfile::Builder::new().prefix(".hosts.toml.").tempfile_in(dir)?;
    tmp.write_all(content.as_bytes())?;
    // Readable by containerd whatever the umask; tempfile creates 0600.
    tmp.as_file().set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Removes `path`, then its directory if nothing else is left in it.
fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        // Not empty (certificates, another tool's files): it stays.
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

/// Writes one `hosts.toml` per mirror under `dir` and removes this owner's
/// files for hosts no longer mirrored (left by a pod that was killed before
/// it could clean up). Returns what it wrote; a file it may not touch is
/// logged and skipped, not an error, so the other mirrors still work.
pub fn apply(dir: &Path, owner: &Owner, port: u16, mirrors: &[NodeMirror]) -> io::Result<Written> {
    let hosts: BTreeSet<&str> = mirrors.iter().map(NodeMirror::host).collect();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(host) = name.to_str() else { continue };
        let path = entry.path().join(HOSTS_FILE);
        if hosts.contains(host) || !entry.file_type()?.is_dir() {
            continue;
        }
        if let Found::Ours = inspect(&path, owner)? {
            tracing::info!(path = %path.display(), "removing a mirror this Registry no longer has");
            remove(&path)?;
        }
    }
    let mut written = Written::default();
    for mirror in mirrors {
        let host_dir = dir.join(mirror.host());
        let path = host_dir.join(HOSTS_FILE);
        match inspect(&path, owner)? {
            Found::Foreign(other) => {
                let by = other.map_or_else(|| "someone else".to_owned(), |o| format!("Registry {o}"));
                tracing::warn!(path = %path.display(), "left alone: written by {by}, not by this Registry");
                continue;
            }
            Found::Absent | Found::Ours => {}
        }
        std::fs::create_dir_all(&host_dir)?;
        write_atomically(&path, &hosts_toml(owner, port, mirror))?;
        tracing::info!(path = %path.display(), prefix = %mirror.0.prefix, "containerd pulls this host through the mirror");
        written.0.push(path);
    }
    Ok(written)
}

/// Removes what [`apply`] wrote, if it still carries this owner's marker.
pub fn clean_up(owner: &Owner, written: &Written) -> io::Result<()> {
    for path in &written.0 {
        match inspect(path, owner)? {
            Found::Ours => {
                remove(path)?;
                tracing::info!(path = %path.display(), "removed");
            }
            Found::Absent => {}
            Found::Foreign(_) => {
                tracing::warn!(path = %path.display(), "replaced by someone else meanwhile; left alone")
            }
        }
    }
    Ok(())
}

/// Writes the files, waits for `shutdown`, removes them.
pub async fn run(
    dir: &Path,
    owner: &Owner,
    port: u16,
    mirrors: &[NodeMirror],
    shutdown: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    let written = apply(dir, owner, port, mirrors)?;
    shutdown.await;
    clean_up(owner, &written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(s: &str) -> Owner {
        s.parse().unwrap()
    }

    fn hub() -> NodeMirror {
        NodeMirror::new("docker.io", "docker.io", "https://registry-1.docker.io").unwrap()
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn arguments_are_checked_like_the_config() {
        assert!("ns/name".parse::<Owner>().is_ok());
        for bad in ["name", "ns/", "/n", "ns/a;b", "ns/a\nb", "NS/a"] {
            assert!(bad.parse::<Owner>().is_err(), "{bad:?}");
        }
        let up: NodeMirror = "10.0.0.1:5443=up=https://10.0.0.1:5443".parse().unwrap();
        assert_eq!(up.host(), "10.0.0.1:5443");
        assert_eq!(up.0.prefix, "up");
        for bad in ["docker.io=docker.io", "a b=up=https://x", "x=Up=https://x", "x=up=ftp://x", "x=up=https://x/v2"] {
            assert!(bad.parse::<NodeMirror>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hosts_toml_sends_pulls_to_the_prefix_on_the_node_port() {
        let text = hosts_toml(&owner("team/cache"), 5001, &hub());
        assert_eq!(
            text,
            "# Written by berth for Registry team/cache; removed when the Registry stops mirroring.\n\
             server = \"https://registry-1.docker.io\"\n\n\
             [host.\"http://127.0.0.1:5001/v2/docker.io\"]\n  capabilities = [\"pull\", \"resolve\"]\n  override_path = true\n"
        );
        assert_eq!(marker_owner(&text), Some("team/cache"));
        assert_eq!(marker_owner("server = \"https://x\"\n"), None);
    }

    #[test]
    fn writes_and_cleans_up_its_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let me = owner("team/cache");
        let up = NodeMirror::new("10.0.0.1:5443", "up", "https://10.0.0.1:5443").unwrap();
        let written = apply(dir.path(), &me, 5001, &[hub(), up]).unwrap();
        assert_eq!(written.paths().len(), 2);
        let hub_file = dir.path().join("docker.io/hosts.toml");
        assert!(read(&hub_file).contains("/v2/docker.io\""));
        assert!(read(&dir.path().join("10.0.0.1:5443/hosts.toml")).contains("server = \"https://10.0.0.1:5443\""));
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&hub_file).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o644);
        // Written again (a restarted pod): replaced in place, no temporary files left.
        apply(dir.path(), &me, 5002, &[hub()]).unwrap();
        assert!(read(&hub_file).contains("127.0.0.1:5002"));
        assert!(!dir.path().join("10.0.0.1:5443").exists(), "a mirror no longer wanted is removed");
        assert_eq!(std::fs::read_dir(dir.path().join("docker.io")).unwrap().count(), 1);
        clean_up(&me, &written).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "files and emptied directories are gone");
    }

    #[test]
    fn never_touches_a_file_it_did_not_write() {
        let dir = tempfile::tempdir().unwrap();
        let hand = dir.path().join("docker.io/hosts.toml");
        std::fs::create_dir_all(hand.parent().unwrap()).unwrap();
        std::fs::write(&hand, "server = \"https://mirror.example\"\n").unwrap();
        let theirs =
            hosts_toml(&owner("other/reg"), 5001, &NodeMirror::new("ghcr.io", "ghcr.io", "https://ghcr.io").unwrap());
        std::fs::create_dir_all(dir.path().join("ghcr.io")).unwrap();
        std::fs::write(dir.path().join("ghcr.io/hosts.toml"), &theirs).unwrap();
        let me = owner("team/cache");
        let ghcr = NodeMirror::new("ghcr.io", "ghcr.io", "https://ghcr.io").unwrap();
        let written = apply(dir.path(), &me, 5001, &[hub(), ghcr]).unwrap();
        assert!(written.paths().is_empty(), "both hosts are someone else's");
        assert_eq!(read(&hand), "server = \"https://mirror.example\"\n");
        assert_eq!(read(&dir.path().join("ghcr.io/hosts.toml")), theirs);
        // Nor when they are stale for this Registry: another owner's file stays.
        apply(dir.path(), &owner("other/x"), 5001, &[]).unwrap();
        assert!(dir.path().join("ghcr.io/hosts.toml").exists());
        // A file of ours that someone replaced meanwhile is theirs now.
        let mine =
            apply(dir.path(), &me, 5001, &[NodeMirror::new("quay.io", "quay.io", "https://quay.io").unwrap()]).unwrap();
        std::fs::write(dir.path().join("quay.io/hosts.toml"), "server = \"https://q\"\n").unwrap();
        clean_up(&me, &mine).unwrap();
        assert!(dir.path().join("quay.io/hosts.toml").exists());
    }

    #[tokio::test]
    async fn run_removes_its_files_when_told_to_stop() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let path = dir.path().to_owned();
        let task = tokio::spawn(async move {
            run(&path, &owner("team/cache"), 5001, &[hub()], async {
                let _ = rx.await;
            })
            .await
        });
        let file = dir.path().join("docker.io/hosts.toml");
        for _ in 0..100 {
            if file.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(file.exists());
        tx.send(()).unwrap();
        task.await.unwrap().unwrap();
        assert!(!dir.path().join("docker.io").exists());
    }
}
