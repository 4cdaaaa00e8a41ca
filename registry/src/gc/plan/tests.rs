use std::time::Duration;

use super::*;
use crate::config::{Span, TagRetention};
use crate::digest::Algorithm;
use crate::storage::lifecycle::{SnapshotManifest, SnapshotTag};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86400);

fn d(name: &str) -> Digest {
    Digest::of(Algorithm::Sha256, name.as_bytes())
}

/// A repository built line by line; times are ages before `now`.
struct Repo {
    now: SystemTime,
    snap: RepoSnapshot,
    refs: Vec<References>,
}

impl Repo {
    fn new() -> Repo {
        Repo { now: SystemTime::UNIX_EPOCH + 1000 * DAY, snap: RepoSnapshot::default(), refs: Vec::new() }
    }

    fn manifest(mut self, name: &str, age: Duration, refs: References) -> Repo {
        let m = SnapshotManifest {
            digest: d(name),
            media_type: "m".into(),
            bytes: None,
            pushed: self.now - age,
            pulled: None,
        };
        self.snap.manifests.push(m);
        self.refs.push(refs);
        self
    }

    fn image(self, name: &str, age: Duration, layers: &[&str]) -> Repo {
        let blobs = layers.iter().map(|l| d(l)).collect();
        self.manifest(name, age, References { blobs, ..References::default() }).links(layers, age)
    }

    fn pulled(mut self, name: &str, age: Duration) -> Repo {
        let now = self.now;
        self.snap.manifests.iter_mut().find(|m| m.digest == d(name)).unwrap().pulled = Some(now - age);
        self
    }

    fn tag(mut self, tag: &str, manifest: &str, age: Duration) -> Repo {
        self.snap.tags.push(SnapshotTag { name: tag.into(), digest: d(manifest), pushed: self.now - age });
        self
    }

    fn links(mut self, layers: &[&str], age: Duration) -> Repo {
        for l in layers {
            if !self.snap.links.iter().any(|(x, _)| *x == d(l)) {
                self.snap.links.push((d(l), self.now - age));
            }
        }
        self
    }

    fn decide(&self, rule: Option<&RetentionRule>, protected: &Protected, rule_dry_run: bool) -> Decision {
        let inputs = Inputs { rule, rule_dry_run, protected, now: self.now, cutoff: self.now - HOUR, evict: None };
        decide(&self.snap, |i| Some(self.refs[i].clone()), &inputs)
    }
}

fn untagged_after(days: u64) -> RetentionRule {
    RetentionRule { repositories: vec!["*".into()], tags: None, untagged_after: Some(Span::secs(days * 86400)) }
}

fn tag_rule(tags: TagRetention) -> RetentionRule {
    RetentionRule { repositories: vec!["*".into()], tags: Some(tags), untagged_after: Some(Span::secs(0)) }
}

fn names(digests: &[Digest], all: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = all.iter().filter(|n| digests.contains(&d(n))).map(|n| n.to_string()).collect();
    out.sort();
    out
}

#[test]
fn without_rules_only_old_unreferenced_links_go() {
    let repo = Repo::new()
        .image("a", 3 * DAY, &["l1", "l2"])
        .image("b", 3 * DAY, &["l2"])
        .links(&["orphan-old"], 2 * HOUR)
        .links(&["orphan-young"], Duration::from_secs(60));
    let out = repo.decide(None, &Protected::default(), false);
    assert!(out.plan.tags.is_empty() && out.plan.manifests.is_empty());
    assert_eq!(out.plan.links, vec![d("orphan-old")]);
    for kept in ["a", "b", "l1", "l2", "orphan-young"] {
        assert!(out.plan.keep.contains(&d(kept)), "{kept}");
    }
    assert!(!out.plan.keep.contains(&d("orphan-old")));
}

#[test]
fn untagged_manifests_go_after_the_rule_but_not_what_tags_reach() {
    let index = References { children: vec![d("child")], ..References::default() };
    let signature = References { subject: Some(d("tagged")), blobs: vec![d("sig-layer")], ..References::default() };
    let repo = Repo::new()
        .image("tagged", 10 * DAY, &["shared"])
        .image("old-untagged", 10 * DAY, &["shared", "only-old"])
        .image("new-untagged", 2 * HOUR, &["only-new"])
        .image("child", 10 * DAY, &["child-layer"])
        .manifest("index", 10 * DAY, index)
        .manifest("sig", 10 * DAY, signature)
        .links(&["sig-layer"], 10 * DAY)
        .tag("v1", "tagged", 10 * DAY)
        .tag("multi", "index", 10 * DAY);
    let out = repo.decide(Some(&untagged_after(1)), &Protected::default(), false);
    assert_eq!(out.plan.manifests, vec![d("old-untagged")]);
    assert_eq!(out.plan.links, vec![d("only-old")], "shared stays with the tagged image");
    for kept in ["child", "child-layer", "sig", "sig-layer", "only-new", "index"] {
        assert!(out.plan.keep.contains(&d(kept)), "{kept}");
    }
}

#[test]
fn a_kept_referrer_keeps_its_subject() {
    let signature = References { subject: Some(d("subject")), ..References::default() };
    let repo = Repo::new().image("subject", 10 * DAY, &["l"]).manifest("sig", 10 * DAY, signature).tag(
        "sig-tag",
        "sig",
        10 * DAY,
    );
    let out = repo.decide(Some(&untagged_after(1)), &Protected::default(), false);
    assert!(out.plan.manifests.is_empty(), "{:?}", out.plan.manifests);
}

#[test]
fn tag_conditions_each_keep_a_tag() {
    let mut repo = Repo::new();
    let all = ["pattern", "recent1", "recent2", "pushed", "pulled", "young", "old1", "old2"];
    for name in all {
        repo = repo.image(name, 30 * DAY, &[]);
    }
    let repo = repo
        .tag("v1.0", "pattern", 30 * DAY)
        .tag("r1", "recent1", 5 * DAY)
        .tag("r2", "recent2", 6 * DAY)
        .tag("p", "pushed", 2 * DAY)
        .tag("u", "pulled", 30 * DAY)
        .pulled("pulled", DAY)
        .tag("y", "young", Duration::from_secs(30))
        .tag("o1", "old1", 20 * DAY)
        .tag("o2", "old2", 21 * DAY);
    let rule = tag_rule(TagRetention {
        keep: vec!["v*".into()],
        keep_most_recent: Some(3),
        keep_pushed_within: Some(Span::secs(3 * 86400)),
        keep_pulled_within: Some(Span::secs(2 * 86400)),
    });
    let out = repo.decide(Some(&rule), &Protected::default(), false);
    // Most recent three: y, p, r1; r2 is older. r2 and the two old ones go.
    assert_eq!(out.plan.tags, vec!["o1".to_owned(), "o2".into(), "r2".into()]);
    assert_eq!(names(&out.plan.manifests, &all), vec!["old1", "old2", "recent2"]);
}

#[test]
fn protected_references_stay_whatever_the_rule_says() {
    let repo = Repo::new()
        .image("running-by-digest", 30 * DAY, &["a"])
        .image("running-by-tag", 30 * DAY, &["b"])
        .image("stale", 30 * DAY, &["c"])
        .tag("deployed", "running-by-tag", 30 * DAY)
        .tag("stale", "stale", 30 * DAY);
    let rule = tag_rule(TagRetention { keep: vec!["none".into()], ..TagRetention::default() });
    let protected =
        Protected { tags: HashSet::from(["deployed".to_owned()]), digests: HashSet::from([d("running-by-digest")]) };
    let out = repo.decide(Some(&rule), &protected, false);
    assert_eq!(out.plan.tags, vec!["stale".to_owned()]);
    assert_eq!(out.plan.manifests, vec![d("stale")]);
    assert_eq!(out.plan.protected_kept, 2);
    let unprotected = repo.decide(Some(&rule), &Protected::default(), false);
    assert_eq!(unprotected.plan.manifests.len(), 3);
}

#[test]
fn a_rule_dry_run_deletes_nothing_and_says_what_it_would() {
    let repo = Repo::new().image("old", 30 * DAY, &["l"]).image("kept", 30 * DAY, &["k"]).tag("t", "kept", 30 * DAY);
    let out = repo.decide(Some(&untagged_after(1)), &Protected::default(), true);
    assert!(out.plan.manifests.is_empty() && out.plan.links.is_empty());
    assert_eq!(out.would_delete.1, vec![d("old")]);
    assert!(out.plan.keep.contains(&d("l")));
}

#[test]
fn unreadable_content_keeps_every_link() {
    let repo = Repo::new().image("a", 30 * DAY, &["l"]).links(&["orphan"], 30 * DAY);
    let inputs = Inputs {
        rule: None,
        rule_dry_run: false,
        protected: &Protected::default(),
        now: repo.now,
        cutoff: repo.now - HOUR,
        evict: None,
    };
    let out = decide(&repo.snap, |_| None, &inputs);
    assert!(out.plan.links.is_empty() && out.plan.manifests.is_empty());
    assert!(out.plan.keep.contains(&d("orphan")));
    // Even under a rule that would delete the old untagged child: an unreadable
    // (index) manifest's children cannot be known.
    let repo = Repo::new().image("index?", 30 * DAY, &[]).image("child", 30 * DAY, &["c"]).tag("t", "index?", DAY);
    let rule = untagged_after(0);
    let inputs = Inputs { rule: Some(&rule), ..inputs };
    let out = decide(&repo.snap, |i| (i > 0).then(References::default), &inputs);
    assert!(out.plan.manifests.is_empty(), "{:?}", out.plan.manifests);
    let readable = decide(&repo.snap, |_| Some(References::default()), &inputs);
    assert_eq!(readable.plan.manifests, vec![d("child")], "the rule itself would delete it");
}
