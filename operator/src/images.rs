//! Image references of Pods, and which of them point at a Registry: the
//! registry's collector must never delete what a pod runs or is about to pull.
//! Pure: the reconciler hands in the Pods it watches.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodSpec, PodStatus};

/// A reference split by the docker grammar `[host[:port]/]path[:tag][@digest]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// Lower-cased, as host names compare; `None` for Docker Hub's short form.
    pub host: Option<String>,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// Parses `reference`, after stripping a `scheme://` prefix as container
/// runtimes put on image IDs (`docker-pullable://`). `None` when it is not a reference.
pub fn parse(reference: &str) -> Option<ImageRef> {
    let reference = reference.trim();
    let reference = reference.split_once("://").map_or(reference, |(_, rest)| rest);
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    if digest.is_some_and(|d| !valid_digest(d)) {
        return None;
    }
    // The first component is a host only if it looks like one: with a dot or a
    // port, or `localhost`. `library/nginx` is a path on Docker Hub.
    let (host, rest) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (Some(first), rest),
        _ => (None, name),
    };
    // A colon after the last slash starts the tag.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match rest[last_slash..].find(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    let path_ok = !path.is_empty() && path.split('/').all(|c| !c.is_empty() && c.chars().all(path_char));
    let tag_ok = tag.is_none_or(|t| !t.is_empty() && t.len() <= 128 && t.chars().all(tag_char));
    let host_ok = host.is_none_or(|h| !h.is_empty() && !h.contains(char::is_whitespace));
    (path_ok && tag_ok && host_ok).then(|| ImageRef {
        host: host.map(str::to_ascii_lowercase),
        path: path.to_owned(),
        tag: tag.map(str::to_owned),
        digest: digest.map(str::to_owned),
    })
}

fn valid_digest(d: &str) -> bool {
    d.split_once(':').is_some_and(|(algorithm, hex)| {
        !algorithm.is_empty()
            && algorithm.chars().all(|c| c.is_ascii_alphanumeric() || "+._-".contains(c))
            && hex.len() >= 32
            && hex.chars().all(|c| c.is_ascii_hexdigit())
    })
}

fn path_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)
}

fn tag_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._-".contains(c)
}

impl ImageRef {
    /// The lines the registry keeps for this reference, host stripped:
    /// `repo:tag`, `repo@digest`, or both. No tag and no digest means `latest`,
    /// which is what a runtime pulls.
    pub fn protected(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(tag) = &self.tag {
            lines.push(format!("{}:{tag}", self.path));
        }
        if let Some(digest) = &self.digest {
            lines.push(format!("{}@{digest}", self.path));
        }
        if lines.is_empty() {
            lines.push(format!("{}:latest", self.path));
        }
        lines
    }
}

/// Every image reference a Pod holds: what its containers of each kind name,
/// and what the runtime reports it resolved them to.
pub fn pod_references(pod: &Pod) -> Vec<&str> {
    let mut refs = Vec::new();
    if let Some(spec) = &pod.spec {
        refs.extend(spec_images(spec));
    }
    if let Some(status) = &pod.status {
        for s in statuses(status) {
            refs.push(s.image.as_str());
            refs.push(s.image_id.as_str());
        }
    }
    refs.retain(|r| !r.is_empty());
    refs
}

fn spec_images(spec: &PodSpec) -> impl Iterator<Item = &str> {
    let containers = spec.containers.iter().filter_map(|c| c.image.as_deref());
    let init = spec.init_containers.iter().flatten().filter_map(|c| c.image.as_deref());
    let ephemeral = spec.ephemeral_containers.iter().flatten().filter_map(|c| c.image.as_deref());
    containers.chain(init).chain(ephemeral)
}

fn statuses(status: &PodStatus) -> impl Iterator<Item = &ContainerStatus> {
    [&status.container_statuses, &status.init_container_statuses, &status.ephemeral_container_statuses]
        .into_iter()
        .flatten()
        .flatten()
}

/// Docker Hub, as containerd names it after normalising `nginx`,
/// `index.docker.io/nginx` and `docker.io/nginx` to `docker.io/library/nginx`.
const DOCKER_HUB: &str = "docker.io";

/// How references name a registry's repositories.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hosts {
    /// The registry's own `host:port` names (lower-case): the path is the repository.
    pub own: BTreeSet<String>,
    /// Upstream image hosts (lower-case) the nodes pull through a mirror
    /// (`containerdMirrors`), with the mirror's prefix: the repository is the
    /// prefix, then the path as containerd sends it.
    pub mirrored: BTreeMap<String, String>,
}

impl From<BTreeSet<String>> for Hosts {
    fn from(own: BTreeSet<String>) -> Self {
        Hosts { own, mirrored: BTreeMap::new() }
    }
}

impl Hosts {
    /// The repository `r` pulls from this registry, if any.
    fn repository(&self, r: &ImageRef) -> Option<String> {
        if r.host.as_ref().is_some_and(|h| self.own.contains(h)) {
            return Some(r.path.clone());
        }
        let host = match r.host.as_deref() {
            None | Some("index.docker.io") => DOCKER_HUB,
            Some(h) => h,
        };
        let prefix = self.mirrored.get(host)?;
        let library = host == DOCKER_HUB && !r.path.contains('/');
        Some(if library { format!("{prefix}/library/{}", r.path) } else { format!("{prefix}/{}", r.path) })
    }
}

/// The protected lines of every reference in `pods` that names a repository
/// of the registry through `hosts`, sorted and without duplicates.
pub fn protected<'a>(pods: impl IntoIterator<Item = &'a Pod>, hosts: &Hosts) -> BTreeSet<String> {
    pods.into_iter()
        .flat_map(pod_references)
        .filter_map(parse)
        .filter_map(|r| Some(ImageRef { path: hosts.repository(&r)?, ..r }))
        .flat_map(|r| r.protected())
        .collect()
}

/// True when some reference of `pod` names a repository of the registry.
pub fn refers_to(pod: &Pod, hosts: &Hosts) -> bool {
    pod_references(pod).into_iter().filter_map(parse).any(|r| hosts.repository(&r).is_some())
}

/// A Pod reduced to what [`pod_references`] reads, so that a cache of every Pod
/// in the cluster holds little more than image names.
pub fn slim(pod: &mut Pod) {
    let keep_status = |s: &mut Vec<ContainerStatus>| {
        for c in s.iter_mut() {
            *c = ContainerStatus {
                name: std::mem::take(&mut c.name),
                image: std::mem::take(&mut c.image),
                image_id: std::mem::take(&mut c.image_id),
                ..Default::default()
            };
        }
    };
    let spec = pod.spec.take().map(|spec| PodSpec {
        containers: spec.containers.into_iter().map(slim_container).collect(),
        init_containers: spec.init_containers.map(|c| c.into_iter().map(slim_container).collect()),
        ephemeral_containers: spec.ephemeral_containers.map(|c| {
            c.into_iter()
                .map(|e| k8s_openapi::api::core::v1::EphemeralContainer {
                    name: e.name,
                    image: e.image,
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    });
    let status = pod.status.take().map(|mut s| {
        [&mut s.container_statuses, &mut s.init_container_statuses, &mut s.ephemeral_container_statuses]
            .into_iter()
            .flatten()
            .for_each(keep_status);
        PodStatus {
            container_statuses: s.container_statuses,
            init_container_statuses: s.init_container_statuses,
            ephemeral_container_statuses: s.ephemeral_container_statuses,
            ..Default::default()
        }
    });
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.labels = None;
    meta.owner_references = None;
    pod.spec = spec;
    pod.status = status;
}

fn slim_container(c: k8s_openapi::api::core::v1::Container) -> k8s_openapi::api::core::v1::Container {
    k8s_openapi::api::core::v1::Container { name: c.name, image: c.image, ..Default::default() }
}

#[cfg(test)]
mod tests;
