use std::time::{Duration, SystemTime};

use super::*;
use crate::digest::Algorithm;

fn d(s: &str) -> Digest {
    Digest::of(Algorithm::Sha256, s.as_bytes())
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn image(tag: &str, used: u64, blobs: &[&str]) -> Image {
    Image {
        repo: "hub/app".into(),
        tag: Some(tag.into()),
        manifests: vec![d(tag)],
        blobs: blobs.iter().map(|b| d(b)).chain([d(tag)]).collect(),
        last_used: at(used),
        pinned: false,
    }
}

fn sizes() -> HashMap<Digest, u64> {
    [("base", 50), ("a", 100), ("b", 100), ("c", 100), ("v1", 1), ("v2", 1), ("v3", 1)]
        .into_iter()
        .map(|(k, v)| (d(k), v))
        .collect()
}

fn images() -> Vec<Image> {
    vec![image("v2", 20, &["base", "b"]), image("v1", 10, &["base", "a"]), image("v3", 30, &["base", "c"])]
}

#[test]
fn the_least_recently_used_go_until_the_rest_fits() {
    // 353 bytes in all; a cap of 260 needs one image gone: the oldest.
    let (evict, freed) = choose(images(), &sizes(), 260);
    assert_eq!(freed, 101, "v1's layer and manifest; the shared base stays");
    assert_eq!(evict["hub/app"].tags, HashSet::from(["v1".to_owned()]));
    assert_eq!(evict["hub/app"].digests, HashSet::from([d("v1")]));
    // A cap below the shared base takes every image with it.
    let (evict, freed) = choose(images(), &sizes(), 10);
    assert_eq!((evict["hub/app"].tags.len(), freed), (3, 353));
    // Under the cap nothing goes.
    assert!(choose(images(), &sizes(), 353).0.is_empty());
}

#[test]
fn pinned_images_are_never_chosen() {
    let mut all = images();
    all[1].pinned = true; // v1: a running pod uses it
    let (evict, freed) = choose(all, &sizes(), 260);
    assert_eq!(evict["hub/app"].tags, HashSet::from(["v2".to_owned()]), "the next oldest instead");
    assert_eq!(freed, 101);
    let all_pinned: Vec<Image> = images().into_iter().map(|i| Image { pinned: true, ..i }).collect();
    assert!(choose(all_pinned, &sizes(), 0).0.is_empty(), "over the cap, but nothing may go");
}
