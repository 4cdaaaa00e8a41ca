//! What a request asks for, and how that maps onto Kubernetes RBAC and onto the
//! htpasswd access rules.
//!
//! RBAC mapping: repository `team-a/app/web` is resource `repositories` of group
//! `berth.dev`, named `app/web`, in namespace `team-a`. A repository with one
//! component, or whose first component cannot be a namespace name, is resource
//! `clusterrepositories`, cluster-scoped and named by its whole path: only a
//! ClusterRoleBinding grants it, and a grant by name (`resourceNames: [alpine]`)
//! cannot leak to `<namespace>/alpine`, which is a `repositories` name.
//! Pull is `get`, push `create`, delete `delete`; the catalog is `list` on
//! `repositories` cluster-wide.

use crate::config::{AccessRule, Action};
use crate::names::RepoName;

pub const GROUP: &str = "berth.dev";
pub const RESOURCE: &str = "repositories";
pub const CLUSTER_RESOURCE: &str = "clusterrepositories";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `GET /v2/`: only asks who the client is.
    Base,
    Catalog,
    Repository(RepoName, Action),
}

impl Scope {
    /// Stable text for cache keys and logs.
    pub fn describe(&self) -> String {
        match self {
            Scope::Base => "base".into(),
            Scope::Catalog => "catalog".into(),
            Scope::Repository(repo, action) => format!("{action:?}:{repo}"),
        }
    }
}

/// The attributes of a SubjectAccessReview.
#[derive(Debug, PartialEq, Eq)]
pub struct RbacTarget {
    pub resource: &'static str,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub verb: &'static str,
}

/// `None` for [`Scope::Base`], which needs no permission.
pub fn rbac_target(scope: &Scope) -> Option<RbacTarget> {
    match scope {
        Scope::Base => None,
        Scope::Catalog => Some(RbacTarget { resource: RESOURCE, namespace: None, name: None, verb: "list" }),
        Scope::Repository(repo, action) => {
            let verb = match action {
                Action::Pull => "get",
                Action::Push => "create",
                Action::Delete => "delete",
            };
            let (namespace, name) = split_namespace(repo.as_str());
            let resource = if namespace.is_some() { RESOURCE } else { CLUSTER_RESOURCE };
            Some(RbacTarget { resource, namespace: namespace.map(str::to_owned), name: Some(name.to_owned()), verb })
        }
    }
}

/// The namespace a repository belongs to, and its name within it.
pub fn split_namespace(repo: &str) -> (Option<&str>, &str) {
    match repo.split_once('/') {
        Some((first, rest)) if is_namespace_name(first) => (Some(first), rest),
        _ => (None, repo),
    }
}

/// A DNS-1123 label: what Kubernetes accepts as a namespace name.
fn is_namespace_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether the htpasswd rules grant `scope` to `user`. No rules at all grant
/// everything to every user (as Distribution's htpasswd does); the catalog needs
/// pull on `*`.
pub fn rules_allow(rules: &[AccessRule], user: &str, scope: &Scope) -> bool {
    if rules.is_empty() {
        return true;
    }
    let (repo, action) = match scope {
        Scope::Base => return true,
        Scope::Catalog => ("*", Action::Pull),
        Scope::Repository(repo, action) => (repo.as_str(), *action),
    };
    rules.iter().any(|rule| {
        rule.users.iter().any(|u| u == "*" || u == user)
            && rule.actions.contains(&action)
            && rule.repositories.iter().any(|p| crate::config::repository_matches(p, repo))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str, a: Action) -> Scope {
        Scope::Repository(s.parse().unwrap(), a)
    }

    #[test]
    fn repositories_map_onto_namespaces() {
        assert_eq!(
            rbac_target(&repo("team-a/app/web", Action::Push)),
            Some(RbacTarget {
                resource: RESOURCE,
                namespace: Some("team-a".into()),
                name: Some("app/web".into()),
                verb: "create"
            })
        );
        assert_eq!(
            rbac_target(&repo("alpine", Action::Pull)),
            Some(RbacTarget { resource: CLUSTER_RESOURCE, namespace: None, name: Some("alpine".into()), verb: "get" })
        );
        // `my.org` and `a_b` cannot be namespaces: the whole path, cluster-scoped.
        for cluster in ["my.org/app", "a_b/app", "-a/app"] {
            assert_eq!(split_namespace(cluster), (None, cluster));
        }
        assert_eq!(split_namespace(&format!("{}/x", "a".repeat(64))).0, None);
        assert_eq!(rbac_target(&Scope::Catalog).unwrap().verb, "list");
        assert_eq!(rbac_target(&repo("ns/x", Action::Delete)).unwrap().verb, "delete");
        assert_eq!(rbac_target(&Scope::Base), None);
    }

    #[test]
    fn htpasswd_rules() {
        let rules = vec![
            AccessRule {
                users: vec!["alice".into()],
                repositories: vec!["team-a/*".into()],
                actions: vec![Action::Pull, Action::Push],
            },
            AccessRule { users: vec!["*".into()], repositories: vec!["public".into()], actions: vec![Action::Pull] },
        ];
        assert!(rules_allow(&rules, "alice", &repo("team-a/app", Action::Push)));
        assert!(!rules_allow(&rules, "alice", &repo("team-a/app", Action::Delete)));
        assert!(!rules_allow(&rules, "alice", &repo("team-ab/app", Action::Pull)));
        assert!(!rules_allow(&rules, "alice", &repo("team-a", Action::Pull)), "team-a/* is below team-a only");
        assert!(rules_allow(&rules, "bob", &repo("public", Action::Pull)));
        assert!(!rules_allow(&rules, "bob", &repo("public", Action::Push)));
        assert!(!rules_allow(&rules, "bob", &repo("public/x", Action::Pull)));
        assert!(!rules_allow(&rules, "alice", &Scope::Catalog));
        assert!(rules_allow(&[], "anyone", &repo("x", Action::Delete)), "no rules: everything");
    }
}
