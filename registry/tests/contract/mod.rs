//! The storage contract (see `src/storage/mod.rs`), written once for every
//! backend. Each check takes a fresh, empty storage; `storage_contract!` turns the
//! list of checks into one test per check for a backend:
//!
//! ```ignore
//! mod fs {
//!     storage_contract!(super::fs_backend());
//! }
//! ```
//!
//! where the expression evaluates to a future of `(storage, guard)`: the guard
//! (a temporary directory, a bucket prefix to clean up) lives as long as the test.

use std::io;
use std::ops::Range;
use std::time::Duration;

use berth_registry::digest::{Algorithm, Digest};
use berth_registry::manifest::ReferrerDescriptor;
use berth_registry::names::{RepoName, Tag, UploadId};
use berth_registry::storage::lifecycle::{Planner, RepoPlan, RepoSnapshot};
use berth_registry::storage::{ByteStream, Chunk, Error, ManifestPut, Referrer, Storage, StoredManifest};
use bytes::Bytes;
use futures_util::{StreamExt, stream};

/// One `#[tokio::test]` per check of the contract, on the backend `$backend`
/// makes. A check left out of this list is dead code, which clippy refuses.
macro_rules! storage_contract {
    ($backend:expr) => {
        storage_contract!(@checks $backend;
            blob_put_size_and_reads,
            blob_empty,
            blob_digest_mismatch_stores_nothing,
            blob_visible_only_where_linked,
            blob_mount,
            blob_delete_unlinks_from_one_repository,
            upload_chunks_and_offsets,
            upload_finish_with_last_chunk,
            upload_chunk_out_of_order,
            upload_chunk_length_mismatch_is_resumable,
            upload_body_error_is_resumable,
            upload_digest_mismatch_cancels,
            upload_cancel,
            upload_unknown,
            upload_sha512,
            upload_concurrent_appends,
            upload_concurrent_appends_at_one_offset,
            upload_finish_races_cancel,
            manifest_missing_references,
            manifest_missing_references_each_once,
            manifest_put_get_exists,
            manifest_tags_written_by_put,
            tag_manifest_follows_moves_and_deletes,
            manifest_tag_moved_twice_unread,
            tags_sorted_and_unknown_repository,
            tag_delete,
            manifest_delete_removes_its_tags_and_referrer,
            manifest_put_again_after_delete,
            tag_survives_concurrent_delete_of_another_manifest,
            tags_never_point_at_deleted_manifests,
            referrers_by_subject,
            catalog_lists_repositories_with_content,
            catalog_forgets_emptied_repositories,
            purge_removes_only_old_sessions,
            gc_snapshot_and_plan_under_the_lock,
            gc_removes_only_links_still_old,
            gc_sweep_spares_content_refreshed_by_a_write,
            gc_one_collector_at_a_time,
            gc_report_round_trips,
            probe_leaves_nothing_behind
        );
    };
    (@checks $backend:expr; $($(#[$attr:meta])* $check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn $check() {
                let (storage, _guard) = $backend.await;
                crate::contract::$check(&storage).await;
            }
        )*
    };
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

// ---------------------------------------------------------------- helpers

fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}

fn tag(s: &str) -> Tag {
    s.parse().unwrap()
}

fn sha256(bytes: &[u8]) -> Digest {
    Digest::of(Algorithm::Sha256, bytes)
}

/// Deterministic bytes that differ per `seed`.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    crate::common::content(seed, len)
}

/// A body made of `parts`, one stream item each.
fn body(parts: &[&[u8]]) -> ByteStream {
    let items: Vec<io::Result<Bytes>> = parts.iter().map(|p| Ok(Bytes::copy_from_slice(p))).collect();
    Box::pin(stream::iter(items))
}

/// A body that delivers `prefix` and then fails, as a client that goes away does.
fn failing(prefix: &[u8]) -> ByteStream {
    let items: Vec<io::Result<Bytes>> = vec![
        Ok(Bytes::copy_from_slice(prefix)),
        Err(io::Error::new(io::ErrorKind::ConnectionReset, "client went away")),
    ];
    Box::pin(stream::iter(items))
}

/// A body that arrives in `pieces` parts with `pause` before each.
fn slow(data: &[u8], pieces: usize, pause: Duration) -> ByteStream {
    let size = data.len().div_ceil(pieces).max(1);
    let chunks: Vec<Bytes> = data.chunks(size).map(Bytes::copy_from_slice).collect();
    Box::pin(stream::iter(chunks).then(move |c| async move {
        tokio::time::sleep(pause).await;
        Ok(c)
    }))
}

fn chunk(start: u64, len: usize) -> Chunk {
    Chunk { start: Some(start), len: Some(len as u64) }
}

async fn collect(mut s: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(item) = s.next().await {
        out.extend_from_slice(&item.expect("reading stored content"));
    }
    out
}

async fn read<S: Storage + ?Sized>(s: &S, r: &RepoName, d: &Digest, range: Range<u64>) -> Vec<u8> {
    collect(s.blob_read(r, d, range).await.expect("blob_read")).await
}

/// Pushes `bytes` as a blob into `r` and returns its digest.
async fn put_blob<S: Storage + ?Sized>(s: &S, r: &RepoName, bytes: &[u8]) -> Digest {
    let d = sha256(bytes);
    assert_eq!(s.blob_put(r, &d, body(&[bytes])).await.expect("blob_put"), bytes.len() as u64);
    d
}

fn image(config: &Digest, layers: &[&Digest], subject: Option<&Digest>) -> Bytes {
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": 2},
        "layers": layers.iter().map(|d| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d.to_string(), "size": 1
        })).collect::<Vec<_>>(),
    });
    if let Some(subject) = subject {
        m["subject"] = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": subject.to_string(), "size": 1});
        m["artifactType"] = "application/vnd.example.signature".into();
    }
    Bytes::from(serde_json::to_vec(&m).unwrap())
}

fn index(children: &[&Digest]) -> Bytes {
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": children.iter().map(|d| serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": d.to_string(), "size": 1
        })).collect::<Vec<_>>(),
    });
    Bytes::from(serde_json::to_vec(&m).unwrap())
}

fn put_of(bytes: Bytes, media_type: &str, blobs: &[&Digest], children: &[&Digest], tags: &[&str]) -> ManifestPut {
    ManifestPut {
        digest: sha256(&bytes),
        manifest: StoredManifest { media_type: media_type.into(), bytes },
        blobs: blobs.iter().map(|d| (*d).clone()).collect(),
        children: children.iter().map(|d| (*d).clone()).collect(),
        referrer: None,
        tags: tags.iter().map(|t| tag(t)).collect(),
    }
}

/// Stores an image manifest in `r` whose blobs are pushed first; `seed` makes it unique.
async fn put_image<S: Storage + ?Sized>(s: &S, r: &RepoName, seed: u64, tags: &[&str]) -> Digest {
    let config = put_blob(s, r, b"{}").await;
    let layer = put_blob(s, r, &pattern(64, seed)).await;
    let put = put_of(image(&config, &[&layer], None), OCI_MANIFEST, &[&config, &layer], &[], tags);
    let digest = put.digest.clone();
    s.manifest_put(r, put).await.expect("manifest_put");
    digest
}

/// Stores a manifest in `r` with `subject` and a referrers entry for it.
async fn put_referrer<S: Storage + ?Sized>(s: &S, r: &RepoName, subject: &Digest, seed: u64) -> ReferrerDescriptor {
    let config = put_blob(s, r, b"{}").await;
    let layer = put_blob(s, r, &pattern(32, seed)).await;
    let mut put = put_of(image(&config, &[&layer], Some(subject)), OCI_MANIFEST, &[&config, &layer], &[], &[]);
    let descriptor = ReferrerDescriptor {
        media_type: OCI_MANIFEST.into(),
        digest: put.digest.clone(),
        size: put.manifest.bytes.len() as u64,
        artifact_type: Some("application/vnd.example.signature".into()),
        annotations: Some([("seed".to_owned(), seed.to_string())].into()),
    };
    put.referrer = Some(Referrer { subject: subject.clone(), descriptor: descriptor.clone() });
    s.manifest_put(r, put).await.expect("manifest_put of a referrer");
    descriptor
}

fn expect_upload_unknown<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) {
    assert!(matches!(result, Err(Error::UploadUnknown)), "{what}: expected UploadUnknown, got {result:?}");
}

// ---------------------------------------------------------------- blobs

/// A blob put reports its size, reads back whole and in ranges, including ranges
/// across the backend's read chunks.
pub async fn blob_put_size_and_reads<S: Storage + ?Sized>(s: &S) {
    let r = repo("blobs/read");
    let small = b"hello, blob".to_vec();
    let d = sha256(&small);
    let parts: Vec<&[u8]> = small.chunks(3).collect();
    assert_eq!(s.blob_put(&r, &d, body(&parts)).await.unwrap(), small.len() as u64);
    assert_eq!(s.blob_size(&r, &d).await.unwrap(), Some(small.len() as u64));
    assert_eq!(read(s, &r, &d, 0..small.len() as u64).await, small);
    assert_eq!(read(s, &r, &d, 7..11).await, b"blob");
    assert_eq!(read(s, &r, &d, 0..1).await, b"h");

    // Large enough for every read path (mapped, chunked) and several send chunks.
    let big = pattern(3 * 1024 * 1024 + 17, 1);
    let d = sha256(&big);
    let parts: Vec<&[u8]> = big.chunks(100_000).collect();
    assert_eq!(s.blob_put(&r, &d, body(&parts)).await.unwrap(), big.len() as u64);
    assert_eq!(s.blob_size(&r, &d).await.unwrap(), Some(big.len() as u64));
    let len = big.len() as u64;
    assert!(read(s, &r, &d, 0..len).await == big, "full read of a large blob differs");
    for range in [0..1, 1000..1_200_000, (1 << 20) - 1..(1 << 20) + 1, len - 5..len, 300_000..len, 5..262_144] {
        let got = read(s, &r, &d, range.clone()).await;
        assert!(got == big[range.start as usize..range.end as usize], "range {range:?} of a large blob differs");
    }

    // Putting the same blob again is harmless.
    assert_eq!(s.blob_put(&r, &d, body(&[&big])).await.unwrap(), len);
    assert_eq!(s.blob_size(&r, &d).await.unwrap(), Some(len));
}

pub async fn blob_empty<S: Storage + ?Sized>(s: &S) {
    let r = repo("empty");
    let d = sha256(b"");
    assert_eq!(s.blob_put(&r, &d, body(&[])).await.unwrap(), 0);
    assert_eq!(s.blob_size(&r, &d).await.unwrap(), Some(0));
    assert_eq!(read(s, &r, &d, 0..0).await, b"");
}

/// Content that does not hash to the name it was pushed under is refused and
/// leaves nothing: not in the repository, not mountable from anywhere, not in the
/// catalog.
pub async fn blob_digest_mismatch_stores_nothing<S: Storage + ?Sized>(s: &S) {
    let r = repo("mismatch");
    let claimed = sha256(b"what the client said");
    let result = s.blob_put(&r, &claimed, body(&[b"what the client ", b"sent"])).await;
    assert!(matches!(result, Err(Error::DigestMismatch)), "got {result:?}");
    assert_eq!(s.blob_size(&r, &claimed).await.unwrap(), None);
    let actual = sha256(b"what the client sent");
    assert_eq!(s.blob_size(&r, &actual).await.unwrap(), None);
    assert!(matches!(s.blob_read(&r, &claimed, 0..1).await, Err(Error::BlobUnknown)));
    let other = repo("elsewhere");
    assert!(!s.blob_mount(&other, &claimed, None).await.unwrap(), "a refused blob is mountable");
    assert!(!s.blob_mount(&other, &actual, None).await.unwrap(), "the refused content is mountable");
    assert_eq!(s.repositories().await.unwrap(), Vec::<String>::new());

    // A sha512 name is checked with sha512.
    let claimed = Digest::of(Algorithm::Sha512, b"x");
    let result = s.blob_put(&r, &claimed, body(&[b"y"])).await;
    assert!(matches!(result, Err(Error::DigestMismatch)), "got {result:?}");
    assert_eq!(s.blob_size(&r, &claimed).await.unwrap(), None);
    let d = Digest::of(Algorithm::Sha512, b"x");
    assert_eq!(s.blob_put(&r, &d, body(&[b"x"])).await.unwrap(), 1);
    assert_eq!(read(s, &r, &d, 0..1).await, b"x");
}

pub async fn blob_visible_only_where_linked<S: Storage + ?Sized>(s: &S) {
    let (a, b, nested) = (repo("team/a"), repo("team/b"), repo("team/a/sub"));
    let d = put_blob(s, &a, b"private to a").await;
    assert_eq!(s.blob_size(&a, &d).await.unwrap(), Some(12));
    for other in [&b, &nested, &repo("team")] {
        assert_eq!(s.blob_size(other, &d).await.unwrap(), None, "visible in {other}");
        let result = s.blob_read(other, &d, 0..1).await.map(|_| ());
        assert!(matches!(result, Err(Error::BlobUnknown)), "readable in {other}: {result:?}");
    }
    // Unknown digest, known repository.
    assert_eq!(s.blob_size(&a, &sha256(b"never pushed")).await.unwrap(), None);
}

pub async fn blob_mount<S: Storage + ?Sized>(s: &S) {
    let (a, b, c, d_repo) = (repo("mount/a"), repo("mount/b"), repo("mount/c"), repo("mount/d"));
    let d = put_blob(s, &a, b"shared layer").await;

    // From a repository that has it.
    assert!(s.blob_mount(&b, &d, Some(&a)).await.unwrap());
    assert_eq!(s.blob_size(&b, &d).await.unwrap(), Some(12));
    assert_eq!(read(s, &b, &d, 0..12).await, b"shared layer");
    // Mounting again is harmless.
    assert!(s.blob_mount(&b, &d, Some(&a)).await.unwrap());

    // From a repository that does not have it: refused, nothing linked.
    assert!(!s.blob_mount(&d_repo, &d, Some(&c)).await.unwrap());
    assert_eq!(s.blob_size(&d_repo, &d).await.unwrap(), None);

    // Anonymous: from wherever it is stored.
    assert!(s.blob_mount(&c, &d, None).await.unwrap());
    assert_eq!(s.blob_size(&c, &d).await.unwrap(), Some(12));

    // Unknown content, named or anonymous.
    let unknown = sha256(b"nobody pushed this");
    assert!(!s.blob_mount(&d_repo, &unknown, Some(&a)).await.unwrap());
    assert!(!s.blob_mount(&d_repo, &unknown, None).await.unwrap());
    assert_eq!(s.blob_size(&d_repo, &unknown).await.unwrap(), None);
    let repos = s.repositories().await.unwrap();
    assert_eq!(repos, ["mount/a", "mount/b", "mount/c"], "failed mounts must not create repositories");

    // A blob unlinked from its only repository is no longer mountable from there.
    assert!(s.blob_delete(&a, &d).await.unwrap());
    assert!(!s.blob_mount(&d_repo, &d, Some(&a)).await.unwrap());
}

pub async fn blob_delete_unlinks_from_one_repository<S: Storage + ?Sized>(s: &S) {
    let (a, b) = (repo("del/a"), repo("del/b"));
    let d = put_blob(s, &a, b"in two repositories").await;
    assert!(s.blob_mount(&b, &d, Some(&a)).await.unwrap());

    assert!(s.blob_delete(&a, &d).await.unwrap());
    assert_eq!(s.blob_size(&a, &d).await.unwrap(), None);
    assert!(matches!(s.blob_read(&a, &d, 0..1).await.map(|_| ()), Err(Error::BlobUnknown)));
    assert_eq!(s.blob_size(&b, &d).await.unwrap(), Some(19));
    assert_eq!(read(s, &b, &d, 0..19).await, b"in two repositories");

    assert!(!s.blob_delete(&a, &d).await.unwrap(), "second delete");
    assert!(!s.blob_delete(&repo("del/never"), &d).await.unwrap(), "delete where never linked");
    assert!(!s.blob_delete(&b, &sha256(b"unknown")).await.unwrap(), "delete of unknown content");

    // Pushing again after a delete links it again.
    put_blob(s, &a, b"in two repositories").await;
    assert_eq!(s.blob_size(&a, &d).await.unwrap(), Some(19));
}

// ---------------------------------------------------------------- uploads

pub async fn upload_chunks_and_offsets<S: Storage + ?Sized>(s: &S) {
    let r = repo("up/chunks");
    let data = pattern(700_000, 2);
    let id = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    assert_eq!(s.upload_offset(&r, id).await.unwrap(), 0);

    // With Content-Range, with only a length, with neither; and an empty chunk.
    assert_eq!(s.upload_append(&r, id, chunk(0, 100), body(&[&data[..100]])).await.unwrap(), 100);
    assert_eq!(s.upload_offset(&r, id).await.unwrap(), 100);
    let c = Chunk { start: None, len: Some(600_000 - 100) };
    let parts: Vec<&[u8]> = data[100..600_000].chunks(65_536).collect();
    assert_eq!(s.upload_append(&r, id, c, body(&parts)).await.unwrap(), 600_000);
    assert_eq!(s.upload_append(&r, id, Chunk::default(), body(&[])).await.unwrap(), 600_000);
    assert_eq!(s.upload_append(&r, id, Chunk::default(), body(&[&data[600_000..]])).await.unwrap(), 700_000);
    assert_eq!(s.upload_offset(&r, id).await.unwrap(), 700_000);

    // Nothing is visible before the upload finishes.
    let d = sha256(&data);
    assert_eq!(s.blob_size(&r, &d).await.unwrap(), None);

    assert_eq!(s.upload_finish(&r, id, &d, None).await.unwrap(), 700_000);
    assert_eq!(s.blob_size(&r, &d).await.unwrap(), Some(700_000));
    assert!(read(s, &r, &d, 0..700_000).await == data, "finished upload differs");
    expect_upload_unknown(s.upload_offset(&r, id).await, "offset of a finished session");
    expect_upload_unknown(s.upload_append(&r, id, Chunk::default(), body(&[b"x"])).await, "append after finish");
    assert_eq!(s.repositories().await.unwrap(), ["up/chunks"]);
}

pub async fn upload_finish_with_last_chunk<S: Storage + ?Sized>(s: &S) {
    let r = repo("up/last");
    // POST + PUT with the whole body.
    let id = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    let d = sha256(b"monolithic");
    assert_eq!(s.upload_finish(&r, id, &d, Some((Chunk::default(), body(&[b"mono", b"lithic"])))).await.unwrap(), 10);
    assert_eq!(read(s, &r, &d, 0..10).await, b"monolithic");

    // PATCH, then PUT with the last chunk.
    let id = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    assert_eq!(s.upload_append(&r, id, chunk(0, 5), body(&[b"first"])).await.unwrap(), 5);
    let d = sha256(b"first, then last");
    let last = Some((chunk(5, 11), body(&[b", then last"])));
    assert_eq!(s.upload_finish(&r, id, &d, last).await.unwrap(), 16);
    assert_eq!(read(s, &r, &d, 0..16).await, b"first, then last");
    expect_upload_unknown(s.upload_offset(&r, id).await, "offset of a finished session");

    // An empty blob through a session.
    let id = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    let d = sha256(b"");
    assert_eq!(s.upload_finish(&r, id, &d, None).await.unwrap(), 0);
    assert_eq!(s.blob_size(&r, &d).await.unwrap(), Some(0));

    // A last chunk out of order is refused and the session stays.
    let id = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    s.upload_append(&r, id, chunk(0, 3), body(&[b"abc"])).await.unwrap();
    let result = s.upload_finish(&r, id, &sha256(b"abcdef"), Some((chunk(4, 3), body(&[b"def"])))).await;
    assert!(matches!(result, Err(Error::ChunkOutOfOrder { start: 4, offset: 3 })), "got {result:?}");
    assert_eq!(s.upload_offset(&r, id).await.unwrap(), 3);
    let d = sha256(b"abcdef");
    assert_eq!(s.upload_finish(&r, id, &d, Some((chunk(3, 3), body(&[b"def"])))).await.unwrap(), 6);
    assert_eq!(read(s, &r, &d, 0..6).await, b"abcdef");
}

pub async fn upload_chunk_out_of_order<S: Storage + ?Sized>(s: &S) {
    let r = repo("up/order");
    let id = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    let result = s.upload_append(&r, id, chunk(1, 3), body(&[b"abc"])).await;
    assert!(matches!(result, Err(Error::ChunkOutOfOrder { start: 1, offset: 0 })), "got {result:?}");
    assert_eq!(s.upload_offset(&r, id).await.unwrap(), 0);

    s.upload_append(&r, id, chunk(0, 4), body(&[b"0123"])).await.unwrap();
    for start in [0, 3, 5, u64::MAX] {
        let result = s.upload_append(&r, id, chunk(start, 1), body(&[b"x"])).await;
        assert!(
            matches!(result, Err(Error::ChunkOutOfOrder { start: st, offset: 4 }) if st == start),
            "chunk at {start}: got {result:?}"
        );
        assert_eq!(s.upload_offset(&r, id).await.unwrap(), 4);
    }
    s.upload_append(&r, id, chunk(4, 2), body(&[b"45"])).await.unwrap();
    let d = sha256(b"012345");
    assert_eq!(s.upload_finish(&r, id, &d, None).await.unwrap(), 6);
    assert_eq!(read(s, &r, &d, 0..6).await, b"012345");
}

/// A chunk whose body is longer or shorter than announced is refused, and the
/// session continues from where it was: the refused bytes are not part of the blob.
pub async fn upload_chunk_length_mismatch_is_resumable<S: Storage + ?Sized>(s: &S) {
    let r = repo("up/length");
    let id = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    s.upload_append(&r, id, chunk(0, 5), body(&[b"hello"])).await.unwrap();

    let longer = Chunk { start: Some(5), len: Some(3) };
    let result = s.upload_append(&r, id, longer, body(&[b"-too-long-"])).await;
    assert!(matches!(result, Err(Error::ChunkLength { announced: 3, received: 10 })), "got {result:?}");
    assert_eq!(s.upload_offset(&r, id).await.unwrap(), 5);

    let shorter = Chunk { start: None, len: Some(100) };
    let result = s.upload_append(&r, id, shorter, body(&[b"short"])).await;
    assert!(matches!(result, Err(Error::ChunkLength { announced: 100, received: 5 })), "got {result:?}");
    assert_eq!(s.upload_offset(&r, id).await.unwrap(), 5);

    // On finish too; the session stays.
    let d = sha256(b"hello, world");
    let result = s.upload_finish(&r, id, &d, Some((Chunk { start: None, len: Some(2) }, body(&[b", world"])))).await;
    assert!(matches!(result, Err(Error::ChunkLength { announced: 2, received: 7 })), "got {result:?}");
    assert_eq!(s.upload_offset(&r, id).await.unwrap(), 5);

    assert_eq!(s.upload_append(&r, id, chunk(5, 2), body(&[b", "])).await.unwrap(), 7);
    assert_eq!(s.upload_finish(&r, id, &d, Some((chunk(7, 5), body(&[b"world"])))).await.unwrap(), 12);
    assert_eq!(s.blob_size(&r, &d).await.unwrap(), Some(12));
    assert_eq!(read(s, &r, &d, 0..12).await, b"hello, world");
}

/// A body that fails part-way leaves the session at its last acknowledged size.
pub async fn upload_body_error_is_resumable<S: Storage + ?Sized>(s: &S) {
    let r = repo("up/body");
    let id = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    s.upload_append(&r, id, Chunk::default(), body(&[b"kept"])).await.unwrap();

    let result = s.upload_append(&r, id, Chunk::default(), failing(b" lost bytes")).await;
    assert!(matches!(result, Err(Error::Body(_))), "got {result:?}");
    assert_eq!(s.upload_offset(&r, id).await.unwrap(), 4);

    // Larger than one write batch, so some of it reached the disk before the error.
    let big = pattern(2 * 1024 * 1024, 3);
    let result = s.upload_append(&r, id, chunk(4, big.len() + 1), failing(&big)).await;
    assert!(matches!(result, Err(Error::Body(_))), "got {result:?}");
    assert_eq!(s.upload_offset(&r, id).await.unwrap(), 4);

    let d = sha256(b"kept, then the rest");
    let result = s.upload_finish(&r, id, &d, Some((Chunk::default(), failing(b", then")))).await;
    assert!(matches!(result, Err(Error::Body(_))), "finish: got {result:?}");
    assert_eq!(s.upload_offset(&r, id).await.unwrap(), 4);
    assert_eq!(s.blob_size(&r, &d).await.unwrap(), None);

    assert_eq!(s.upload_append(&r, id, chunk(4, 6), body(&[b", then"])).await.unwrap(), 10);
    assert_eq!(s.upload_finish(&r, id, &d, Some((chunk(10, 9), body(&[b" the rest"])))).await.unwrap(), 19);
    assert_eq!(read(s, &r, &d, 0..19).await, b"kept, then the rest");
}

pub async fn upload_digest_mismatch_cancels<S: Storage + ?Sized>(s: &S) {
    let r = repo("up/mismatch");
    let id = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    s.upload_append(&r, id, Chunk::default(), body(&[b"content"])).await.unwrap();
    let wrong = sha256(b"other content");
    let result = s.upload_finish(&r, id, &wrong, None).await;
    assert!(matches!(result, Err(Error::DigestMismatch)), "got {result:?}");
    expect_upload_unknown(s.upload_offset(&r, id).await, "offset after a mismatch");
    expect_upload_unknown(s.upload_finish(&r, id, &sha256(b"content"), None).await, "finish after a mismatch");
    assert_eq!(s.blob_size(&r, &wrong).await.unwrap(), None);
    assert_eq!(s.blob_size(&r, &sha256(b"content")).await.unwrap(), None);
    assert!(!s.blob_mount(&r, &sha256(b"content"), None).await.unwrap());

    // With a last chunk.
    let id = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    let result = s.upload_finish(&r, id, &wrong, Some((Chunk::default(), body(&[b"content"])))).await;
    assert!(matches!(result, Err(Error::DigestMismatch)), "got {result:?}");
    expect_upload_unknown(s.upload_offset(&r, id).await, "offset after a mismatch");
    assert_eq!(s.repositories().await.unwrap(), Vec::<String>::new());
}

pub async fn upload_cancel<S: Storage + ?Sized>(s: &S) {
    let r = repo("up/cancel");
    let id = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    s.upload_append(&r, id, Chunk::default(), body(&[b"abandoned"])).await.unwrap();
    s.upload_cancel(&r, id).await.unwrap();
    expect_upload_unknown(s.upload_offset(&r, id).await, "offset after cancel");
    expect_upload_unknown(s.upload_append(&r, id, Chunk::default(), body(&[b"x"])).await, "append after cancel");
    expect_upload_unknown(s.upload_finish(&r, id, &sha256(b"abandoned"), None).await, "finish after cancel");
    expect_upload_unknown(s.upload_cancel(&r, id).await, "second cancel");
    assert_eq!(s.blob_size(&r, &sha256(b"abandoned")).await.unwrap(), None);

    // Cancelling an untouched session works too; other sessions are unaffected.
    let (one, two) =
        (s.upload_start(&r, Algorithm::Sha256).await.unwrap(), s.upload_start(&r, Algorithm::Sha256).await.unwrap());
    assert_ne!(one, two);
    s.upload_append(&r, two, Chunk::default(), body(&[b"two"])).await.unwrap();
    s.upload_cancel(&r, one).await.unwrap();
    assert_eq!(s.upload_offset(&r, two).await.unwrap(), 3);
}

pub async fn upload_unknown<S: Storage + ?Sized>(s: &S) {
    let (r, other) = (repo("up/known"), repo("up/other"));
    let never = UploadId::random();
    expect_upload_unknown(s.upload_offset(&r, never).await, "offset");
    expect_upload_unknown(s.upload_append(&r, never, Chunk::default(), body(&[b"x"])).await, "append");
    expect_upload_unknown(s.upload_finish(&r, never, &sha256(b"x"), None).await, "finish");
    let last = Some((Chunk::default(), body(&[b"x"])));
    expect_upload_unknown(s.upload_finish(&r, never, &sha256(b"x"), last).await, "finish with a chunk");
    expect_upload_unknown(s.upload_cancel(&r, never).await, "cancel");

    // A session belongs to the repository it was started in.
    let id = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    s.upload_append(&r, id, Chunk::default(), body(&[b"mine"])).await.unwrap();
    expect_upload_unknown(s.upload_offset(&other, id).await, "offset from another repository");
    expect_upload_unknown(s.upload_append(&other, id, Chunk::default(), body(&[b"x"])).await, "append elsewhere");
    expect_upload_unknown(s.upload_finish(&other, id, &sha256(b"mine"), None).await, "finish elsewhere");
    expect_upload_unknown(s.upload_cancel(&other, id).await, "cancel elsewhere");
    expect_upload_unknown(s.upload_offset(&repo("up"), id).await, "offset from the parent repository");
    assert_eq!(s.upload_offset(&r, id).await.unwrap(), 4);
    assert_eq!(s.upload_finish(&r, id, &sha256(b"mine"), None).await.unwrap(), 4);
    assert_eq!(s.blob_size(&other, &sha256(b"mine")).await.unwrap(), None);
}

/// A session that hashes with SHA-512, finished with a SHA-512 digest, and one
/// finished with another algorithm than it hashed with.
pub async fn upload_sha512<S: Storage + ?Sized>(s: &S) {
    let r = repo("up/sha512");
    let data = pattern(1_500_000, 4);
    let id = s.upload_start(&r, Algorithm::Sha512).await.unwrap();
    assert_eq!(s.upload_offset(&r, id).await.unwrap(), 0);
    s.upload_append(&r, id, chunk(0, 1_000_000), body(&[&data[..1_000_000]])).await.unwrap();
    assert_eq!(s.upload_offset(&r, id).await.unwrap(), 1_000_000);
    let d = Digest::of(Algorithm::Sha512, &data);
    let last = Some((chunk(1_000_000, 500_000), body(&[&data[1_000_000..]])));
    assert_eq!(s.upload_finish(&r, id, &d, last).await.unwrap(), 1_500_000);
    assert_eq!(s.blob_size(&r, &d).await.unwrap(), Some(1_500_000));
    assert!(read(s, &r, &d, 0..1_500_000).await == data);
    assert_eq!(s.blob_size(&r, &sha256(&data)).await.unwrap(), None);

    // A mismatch is detected with SHA-512 too.
    let id = s.upload_start(&r, Algorithm::Sha512).await.unwrap();
    s.upload_append(&r, id, Chunk::default(), body(&[b"abc"])).await.unwrap();
    let result = s.upload_finish(&r, id, &Digest::of(Algorithm::Sha512, b"abd"), None).await;
    assert!(matches!(result, Err(Error::DigestMismatch)), "got {result:?}");
    expect_upload_unknown(s.upload_offset(&r, id).await, "offset after a mismatch");

    // Hashed with one algorithm, finished with the other: still verified.
    for (started, finished) in [(Algorithm::Sha512, Algorithm::Sha256), (Algorithm::Sha256, Algorithm::Sha512)] {
        let id = s.upload_start(&r, started).await.unwrap();
        s.upload_append(&r, id, Chunk::default(), body(&[b"switch"])).await.unwrap();
        let d = Digest::of(finished, b"switch algorithms");
        let last = Some((Chunk::default(), body(&[b" algorithms"])));
        assert_eq!(s.upload_finish(&r, id, &d, last).await.unwrap(), 17, "{started:?} then {finished:?}");
        assert_eq!(read(s, &r, &d, 0..17).await, b"switch algorithms");

        let id = s.upload_start(&r, started).await.unwrap();
        s.upload_append(&r, id, Chunk::default(), body(&[b"switch"])).await.unwrap();
        let result = s.upload_finish(&r, id, &Digest::of(finished, b"switched"), None).await;
        assert!(matches!(result, Err(Error::DigestMismatch)), "{started:?} then {finished:?}: got {result:?}");
    }
}

/// Two appends to one session at once, neither naming a start: both land, one
/// after the other (or one is turned away as busy), never interleaved.
pub async fn upload_concurrent_appends<S: Storage + ?Sized>(s: &S) {
    let r = repo("up/concurrent");
    for round in 0..3u64 {
        let id = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
        s.upload_append(&r, id, Chunk::default(), body(&[b"head:"])).await.unwrap();
        let (a, b) = (pattern(300_000, 10 + round), pattern(200_001, 20 + round));
        let pause = Duration::from_millis(15);
        let (ra, rb) = tokio::join!(
            s.upload_append(&r, id, Chunk::default(), slow(&a, 8, pause)),
            s.upload_append(&r, id, Chunk::default(), slow(&b, 8, pause)),
        );
        let mut expected = b"head:".to_vec();
        match (&ra, &rb) {
            (Ok(na), Ok(nb)) => {
                let (first, second) = if na < nb { (&a, &b) } else { (&b, &a) };
                assert_eq!(*na.min(nb), 5 + first.len() as u64, "first append's size: {ra:?} {rb:?}");
                assert_eq!(*na.max(nb), 5 + (a.len() + b.len()) as u64, "second append's size: {ra:?} {rb:?}");
                expected.extend_from_slice(first);
                expected.extend_from_slice(second);
            }
            (Ok(n), Err(Error::UploadBusy)) => {
                assert_eq!(*n, 5 + a.len() as u64);
                expected.extend_from_slice(&a);
            }
            (Err(Error::UploadBusy), Ok(n)) => {
                assert_eq!(*n, 5 + b.len() as u64);
                expected.extend_from_slice(&b);
            }
            _ => panic!("concurrent appends: {ra:?} and {rb:?}"),
        }
        assert_eq!(s.upload_offset(&r, id).await.unwrap(), expected.len() as u64);
        let d = sha256(&expected);
        assert_eq!(s.upload_finish(&r, id, &d, None).await.unwrap(), expected.len() as u64);
        assert!(read(s, &r, &d, 0..expected.len() as u64).await == expected, "round {round}: content differs");
    }
}

/// Two appends that both claim the same start (a client retrying a chunk while its
/// first attempt is still being written): exactly one lands.
pub async fn upload_concurrent_appends_at_one_offset<S: Storage + ?Sized>(s: &S) {
    let r = repo("up/retry");
    let id = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    let (a, b) = (pattern(250_000, 30), pattern(250_000, 31));
    let pause = Duration::from_millis(15);
    let (ra, rb) = tokio::join!(
        s.upload_append(&r, id, chunk(0, a.len()), slow(&a, 8, pause)),
        s.upload_append(&r, id, chunk(0, b.len()), slow(&b, 8, pause)),
    );
    let winner = match (&ra, &rb) {
        (Ok(250_000), Err(Error::ChunkOutOfOrder { start: 0, offset: 250_000 } | Error::UploadBusy)) => &a,
        (Err(Error::ChunkOutOfOrder { start: 0, offset: 250_000 } | Error::UploadBusy), Ok(250_000)) => &b,
        _ => panic!("appends at one offset: {ra:?} and {rb:?}"),
    };
    assert_eq!(s.upload_offset(&r, id).await.unwrap(), 250_000);
    let d = sha256(winner);
    assert_eq!(s.upload_finish(&r, id, &d, None).await.unwrap(), 250_000);
    assert!(read(s, &r, &d, 0..250_000).await == *winner);
}

/// A finish and a cancel of one session at once: one of them wins, and the blob
/// exists exactly when the finish did.
pub async fn upload_finish_races_cancel<S: Storage + ?Sized>(s: &S) {
    let r = repo("up/race");
    for round in 0..3u64 {
        let data = pattern(200_000, 40 + round);
        let d = sha256(&data);
        let id = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
        let last = Some((Chunk::default(), slow(&data, 4, Duration::from_millis(10))));
        let (finished, cancelled) = tokio::join!(s.upload_finish(&r, id, &d, last), async {
            tokio::time::sleep(Duration::from_millis(5 * round)).await;
            s.upload_cancel(&r, id).await
        });
        match (&finished, &cancelled) {
            (Ok(200_000), Err(Error::UploadUnknown | Error::UploadBusy)) => {
                assert!(read(s, &r, &d, 0..200_000).await == data);
                assert!(s.blob_delete(&r, &d).await.unwrap());
            }
            (Err(Error::UploadUnknown | Error::UploadBusy), Ok(())) => {
                assert_eq!(s.blob_size(&r, &d).await.unwrap(), None);
            }
            _ => panic!("finish and cancel: {finished:?} and {cancelled:?}"),
        }
        expect_upload_unknown(s.upload_offset(&r, id).await, "offset after the race");
    }
}

// ---------------------------------------------------------------- manifests

/// A manifest whose blobs and children are missing is refused with all of them,
/// blobs first, in the order listed, and nothing of it is stored.
pub async fn manifest_missing_references<S: Storage + ?Sized>(s: &S) {
    let r = repo("man/missing");
    let present = put_blob(s, &r, b"present layer").await;
    let child = put_image(s, &r, 1, &[]).await;
    let (m1, m2, m3) = (sha256(b"missing 1"), sha256(b"missing 2"), sha256(b"missing 3"));
    let (c1, c2) = (sha256(b"missing child 1"), sha256(b"missing child 2"));
    let put = put_of(
        index(&[&child, &c1, &c2]),
        OCI_INDEX,
        &[&m2, &present, &m1, &m3],
        &[&c2, &child, &c1],
        &["latest", "v1"],
    );
    let digest = put.digest.clone();
    let result = s.manifest_put(&r, put).await;
    match result {
        Err(Error::ReferencesUnknown(missing)) => assert_eq!(missing, [m2, m1.clone(), m3, c2, c1]),
        other => panic!("expected ReferencesUnknown, got {other:?}"),
    }
    assert!(!s.manifest_exists(&r, &digest).await.unwrap());
    assert!(s.manifest_get(&r, &digest).await.unwrap().is_none());
    assert_eq!(s.tag_get(&r, &tag("latest")).await.unwrap(), None);
    assert_eq!(s.tag_get(&r, &tag("v1")).await.unwrap(), None);
    assert_eq!(s.tags(&r).await.unwrap(), Some(vec![]));

    // A blob linked into another repository does not count; a manifest in another
    // repository does not either.
    let elsewhere = repo("man/elsewhere");
    let put = put_of(index(&[&child]), OCI_INDEX, &[&present], &[&child], &["x"]);
    let digest = put.digest.clone();
    match s.manifest_put(&elsewhere, put).await {
        Err(Error::ReferencesUnknown(missing)) => assert_eq!(missing, [present.clone(), child.clone()]),
        other => panic!("expected ReferencesUnknown, got {other:?}"),
    }
    assert!(!s.manifest_exists(&elsewhere, &digest).await.unwrap());
    assert_eq!(s.tags(&elsewhere).await.unwrap(), None);
    assert_eq!(s.repositories().await.unwrap(), ["man/missing"]);

    // A referrer whose references are missing leaves no referrers entry.
    let mut put = put_of(image(&m1, &[], Some(&child)), OCI_MANIFEST, &[&m1], &[], &[]);
    let descriptor = ReferrerDescriptor {
        media_type: OCI_MANIFEST.into(),
        digest: put.digest.clone(),
        size: put.manifest.bytes.len() as u64,
        artifact_type: None,
        annotations: None,
    };
    put.referrer = Some(Referrer { subject: child.clone(), descriptor });
    assert!(matches!(s.manifest_put(&r, put).await, Err(Error::ReferencesUnknown(_))));
    assert_eq!(s.referrers(&r, &child).await.unwrap(), []);
}

/// A reference listed twice, or as a blob and as a child, is reported once.
pub async fn manifest_missing_references_each_once<S: Storage + ?Sized>(s: &S) {
    let r = repo("man/once");
    let (m1, m2) = (sha256(b"missing 1"), sha256(b"missing 2"));
    let put = put_of(index(&[&m2]), OCI_INDEX, &[&m1, &m2, &m1], &[&m2, &m2], &[]);
    match s.manifest_put(&r, put).await {
        Err(Error::ReferencesUnknown(missing)) => assert_eq!(missing, [m1, m2]),
        other => panic!("expected ReferencesUnknown, got {other:?}"),
    }
}

pub async fn manifest_put_get_exists<S: Storage + ?Sized>(s: &S) {
    let (r, other) = (repo("man/get"), repo("man/get-other"));
    let config = put_blob(s, &r, b"{}").await;
    let bytes = image(&config, &[], None);
    let put = put_of(bytes.clone(), OCI_MANIFEST, &[&config], &[], &[]);
    let digest = put.digest.clone();
    assert!(!s.manifest_exists(&r, &digest).await.unwrap());
    s.manifest_put(&r, put).await.unwrap();
    assert!(s.manifest_exists(&r, &digest).await.unwrap());
    let got = s.manifest_get(&r, &digest).await.unwrap().expect("stored manifest");
    assert_eq!(got.media_type, OCI_MANIFEST);
    assert_eq!(got.bytes, bytes);

    // Only in its repository.
    assert!(!s.manifest_exists(&other, &digest).await.unwrap());
    assert!(s.manifest_get(&other, &digest).await.unwrap().is_none());
    assert!(!s.manifest_exists(&repo("man"), &digest).await.unwrap());

    // An index whose child is there; a manifest with no references at all, pushed
    // with an unknown media type: stored as given.
    let index_put = put_of(index(&[&digest]), OCI_INDEX, &[], &[&digest], &["multi"]);
    let index_digest = index_put.digest.clone();
    s.manifest_put(&r, index_put).await.unwrap();
    assert_eq!(s.manifest_get(&r, &index_digest).await.unwrap().unwrap().media_type, OCI_INDEX);
    let odd = put_of(Bytes::from_static(b"not even JSON"), "application/x-odd", &[], &[], &[]);
    let odd_digest = odd.digest.clone();
    s.manifest_put(&other, odd).await.unwrap();
    let got = s.manifest_get(&other, &odd_digest).await.unwrap().unwrap();
    assert_eq!((got.media_type.as_str(), &got.bytes[..]), ("application/x-odd", &b"not even JSON"[..]));

    // The same content pushed into a second repository with another media type.
    let again = put_of(bytes.clone(), "application/vnd.docker.distribution.manifest.v2+json", &[], &[], &[]);
    s.manifest_put(&other, again).await.unwrap();
    assert_eq!(
        s.manifest_get(&other, &digest).await.unwrap().unwrap().media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(s.manifest_get(&r, &digest).await.unwrap().unwrap().media_type, OCI_MANIFEST);

    // Putting the same manifest again is harmless.
    s.manifest_put(&r, put_of(bytes.clone(), OCI_MANIFEST, &[&config], &[], &[])).await.unwrap();
    assert_eq!(s.manifest_get(&r, &digest).await.unwrap().unwrap().bytes, bytes);

    // sha512-named manifests.
    let d512 = Digest::of(Algorithm::Sha512, &bytes);
    let mut put = put_of(bytes.clone(), OCI_MANIFEST, &[&config], &[], &["sha512"]);
    put.digest = d512.clone();
    s.manifest_put(&r, put).await.unwrap();
    assert!(s.manifest_exists(&r, &d512).await.unwrap());
    assert_eq!(s.tag_get(&r, &tag("sha512")).await.unwrap(), Some(d512));
}

pub async fn manifest_tags_written_by_put<S: Storage + ?Sized>(s: &S) {
    let r = repo("man/tags");
    let one = put_image(s, &r, 1, &["latest", "v1", "V1", "_x"]).await;
    for t in ["latest", "v1", "V1", "_x"] {
        assert_eq!(s.tag_get(&r, &tag(t)).await.unwrap(), Some(one.clone()), "tag {t}");
    }
    assert_eq!(s.tag_get(&r, &tag("v2")).await.unwrap(), None);
    assert_eq!(s.tag_get(&repo("man/untagged"), &tag("latest")).await.unwrap(), None);

    // A later put moves a tag and leaves the others.
    let two = put_image(s, &r, 2, &["latest", "v2"]).await;
    assert_eq!(s.tag_get(&r, &tag("latest")).await.unwrap(), Some(two.clone()));
    assert_eq!(s.tag_get(&r, &tag("v2")).await.unwrap(), Some(two.clone()));
    assert_eq!(s.tag_get(&r, &tag("v1")).await.unwrap(), Some(one.clone()));
    // And back.
    s.manifest_put(
        &r,
        put_of(s.manifest_get(&r, &one).await.unwrap().unwrap().bytes, OCI_MANIFEST, &[], &[], &["latest"]),
    )
    .await
    .unwrap();
    assert_eq!(s.tag_get(&r, &tag("latest")).await.unwrap(), Some(one.clone()));

    // Tags are per repository.
    let elsewhere = repo("man/tags-elsewhere");
    let three = put_image(s, &elsewhere, 3, &["latest"]).await;
    assert_eq!(s.tag_get(&elsewhere, &tag("latest")).await.unwrap(), Some(three));
    assert_eq!(s.tag_get(&r, &tag("latest")).await.unwrap(), Some(one));
    assert_eq!(s.tag_get(&elsewhere, &tag("v1")).await.unwrap(), None);
}

/// A pull by tag reads the manifest the tag names now, with its media type:
/// after a move, and never after the tag or the manifest is deleted.
pub async fn tag_manifest_follows_moves_and_deletes<S: Storage + ?Sized>(s: &S) {
    let r = repo("man/by-tag");
    let one = put_image(s, &r, 1, &["latest", "stay"]).await;
    let r = &r;
    let read = |t: &'static str| async move { s.tag_manifest(r, &tag(t)).await.unwrap() };
    let (digest, stored) = read("latest").await.expect("tagged");
    assert_eq!((digest.clone(), stored.media_type.as_str()), (one.clone(), OCI_MANIFEST));
    assert_eq!(sha256(&stored.bytes), one);
    let two = put_image(s, r, 2, &["latest"]).await;
    let (digest, stored) = read("latest").await.expect("moved");
    assert_eq!((digest, sha256(&stored.bytes)), (two.clone(), two.clone()));
    assert!(s.tag_delete(r, &tag("latest")).await.unwrap());
    assert!(read("latest").await.is_none(), "a deleted tag");
    assert!(s.manifest_delete(r, &one).await.unwrap());
    assert!(read("stay").await.is_none(), "the tag of a deleted manifest");
    assert!(read("never").await.is_none());
}

/// A tag moved twice with no read in between reads as the last write, never as
/// what a reader saw before: no cache may keep answering with a replaced value.
pub async fn manifest_tag_moved_twice_unread<S: Storage + ?Sized>(s: &S) {
    let r = repo("man/moves");
    let mut manifests = Vec::new();
    for seed in 0..3u64 {
        let bytes = Bytes::from(format!("{{\"manifest\":{seed}}}"));
        let put = put_of(bytes, "application/x-test", &[], &[], &[]);
        manifests.push(put.manifest.bytes.clone());
        s.manifest_put(&r, put).await.unwrap();
    }
    let digest = |i: usize| sha256(&manifests[i]);
    let tagged = |i: usize| put_of(manifests[i].clone(), "application/x-test", &[], &[], &["t"]);
    for round in 0..100 {
        s.manifest_put(&r, tagged(0)).await.unwrap();
        assert_eq!(s.tag_get(&r, &tag("t")).await.unwrap(), Some(digest(0)), "round {round}, first write");
        s.manifest_put(&r, tagged(1)).await.unwrap();
        s.manifest_put(&r, tagged(2)).await.unwrap();
        assert_eq!(s.tag_get(&r, &tag("t")).await.unwrap(), Some(digest(2)), "round {round}, after two moves");
    }
}

pub async fn tags_sorted_and_unknown_repository<S: Storage + ?Sized>(s: &S) {
    let r = repo("man/sorted");
    assert_eq!(s.tags(&r).await.unwrap(), None, "tags of an unknown repository");
    put_image(s, &r, 1, &["v10", "latest", "V2", "v2", "1.0", "_a", "a-b", "a.b", "a_b", "Z"]).await;
    put_image(s, &r, 2, &["v9", "0"]).await;
    let mut expected = vec!["v10", "latest", "V2", "v2", "1.0", "_a", "a-b", "a.b", "a_b", "Z", "v9", "0"];
    expected.sort_unstable();
    assert_eq!(s.tags(&r).await.unwrap(), Some(expected.iter().map(|t| t.to_string()).collect()));

    // Known repositories without tags; unknown ones beside and below known ones.
    let untagged = repo("man/untagged");
    put_image(s, &untagged, 3, &[]).await;
    assert_eq!(s.tags(&untagged).await.unwrap(), Some(vec![]));
    assert_eq!(s.tags(&repo("man")).await.unwrap(), None);
    assert_eq!(s.tags(&repo("man/sorted/below")).await.unwrap(), None);
    assert_eq!(s.tags(&repo("man/sortedx")).await.unwrap(), None);
}

pub async fn tag_delete<S: Storage + ?Sized>(s: &S) {
    let r = repo("man/tagdel");
    let m = put_image(s, &r, 1, &["a", "b"]).await;
    assert!(s.tag_delete(&r, &tag("a")).await.unwrap());
    assert!(!s.tag_delete(&r, &tag("a")).await.unwrap());
    assert_eq!(s.tag_get(&r, &tag("a")).await.unwrap(), None);
    assert_eq!(s.tag_get(&r, &tag("b")).await.unwrap(), Some(m.clone()));
    assert_eq!(s.tags(&r).await.unwrap(), Some(vec!["b".to_owned()]));
    assert!(s.manifest_exists(&r, &m).await.unwrap(), "deleting a tag deletes its manifest");
    assert!(!s.tag_delete(&repo("man/nowhere"), &tag("b")).await.unwrap());
    assert_eq!(s.tags(&repo("man/nowhere")).await.unwrap(), None);
}

pub async fn manifest_delete_removes_its_tags_and_referrer<S: Storage + ?Sized>(s: &S) {
    let r = repo("man/delete");
    let keep = put_image(s, &r, 1, &["keep", "stable"]).await;
    let gone = put_image(s, &r, 2, &["gone", "latest"]).await;
    let signature = put_referrer(s, &r, &gone, 3).await;
    let other_signature = put_referrer(s, &r, &gone, 4).await;
    // Moves `latest` to the kept manifest after the fact: it must survive.
    s.manifest_put(
        &r,
        put_of(s.manifest_get(&r, &keep).await.unwrap().unwrap().bytes, OCI_MANIFEST, &[], &[], &["latest"]),
    )
    .await
    .unwrap();

    assert!(s.manifest_delete(&r, &signature.digest).await.unwrap());
    let left: Vec<Digest> = s.referrers(&r, &gone).await.unwrap().into_iter().map(|d| d.digest).collect();
    assert_eq!(left, [other_signature.digest], "the deleted referrer is still listed");

    assert!(s.manifest_delete(&r, &gone).await.unwrap());
    assert!(!s.manifest_exists(&r, &gone).await.unwrap());
    assert!(s.manifest_get(&r, &gone).await.unwrap().is_none());
    assert_eq!(s.tag_get(&r, &tag("gone")).await.unwrap(), None);
    assert_eq!(s.tag_get(&r, &tag("latest")).await.unwrap(), Some(keep.clone()));
    assert_eq!(s.tag_get(&r, &tag("keep")).await.unwrap(), Some(keep.clone()));
    assert_eq!(s.tags(&r).await.unwrap(), Some(vec!["keep".into(), "latest".into(), "stable".into()]));
    assert!(s.manifest_exists(&r, &keep).await.unwrap());
    assert!(!s.manifest_delete(&r, &gone).await.unwrap(), "second delete");
    assert!(!s.manifest_delete(&repo("man/none"), &keep).await.unwrap(), "delete in another repository");
    assert!(s.manifest_exists(&r, &keep).await.unwrap());

    // The manifest's content may be shared: a copy in another repository stays.
    let copy = repo("man/delete-copy");
    let bytes = s.manifest_get(&r, &keep).await.unwrap().unwrap().bytes;
    s.manifest_put(&copy, put_of(bytes.clone(), OCI_MANIFEST, &[], &[], &["keep"])).await.unwrap();
    assert!(s.manifest_delete(&r, &keep).await.unwrap());
    assert_eq!(s.tags(&r).await.unwrap(), Some(vec![]));
    assert_eq!(s.manifest_get(&copy, &keep).await.unwrap().unwrap().bytes, bytes);
    assert_eq!(s.tag_get(&copy, &tag("keep")).await.unwrap(), Some(keep));
}

/// A manifest deleted and pushed again, with another media type and tag, reads
/// as pushed the second time (no cache may answer with the first).
pub async fn manifest_put_again_after_delete<S: Storage + ?Sized>(s: &S) {
    let r = repo("man/again");
    let bytes = Bytes::from_static(b"{\"schemaVersion\":2}");
    let digest = sha256(&bytes);
    for round in 0..50 {
        let (media_type, tag_name) =
            if round % 2 == 0 { ("application/x-even", "even") } else { ("application/x-oddd", "odd") };
        s.manifest_put(&r, put_of(bytes.clone(), media_type, &[], &[], &[tag_name])).await.unwrap();
        let got = s.manifest_get(&r, &digest).await.unwrap().expect("manifest after put");
        assert_eq!(got.media_type, media_type, "round {round}");
        assert_eq!(s.tags(&r).await.unwrap(), Some(vec![tag_name.to_owned()]), "round {round}");
        assert!(s.manifest_delete(&r, &digest).await.unwrap(), "round {round}");
        assert!(s.manifest_get(&r, &digest).await.unwrap().is_none(), "round {round}: readable after delete");
        assert!(!s.manifest_exists(&r, &digest).await.unwrap(), "round {round}: exists after delete");
        assert_eq!(s.tag_get(&r, &tag(tag_name)).await.unwrap(), None, "round {round}: tag after delete");
    }
}

/// Moving a tag to a new manifest while the manifest it pointed at is deleted:
/// the acknowledged tag write survives.
pub async fn tag_survives_concurrent_delete_of_another_manifest<S: Storage + ?Sized>(s: &S) {
    let r = repo("man/race");
    for round in 0..20u64 {
        let old = put_image(s, &r, 2 * round, &["t", "old"]).await;
        let config = put_blob(s, &r, b"{}").await;
        let layer = put_blob(s, &r, &pattern(64, 2 * round + 1)).await;
        let put = put_of(image(&config, &[&layer], None), OCI_MANIFEST, &[&config, &layer], &[], &["t"]);
        let new = put.digest.clone();
        let (put, deleted) = tokio::join!(s.manifest_put(&r, put), s.manifest_delete(&r, &old));
        put.unwrap();
        assert!(deleted.unwrap(), "round {round}");
        assert_eq!(s.tag_get(&r, &tag("t")).await.unwrap(), Some(new.clone()), "round {round}: the moved tag");
        assert_eq!(s.tag_get(&r, &tag("old")).await.unwrap(), None, "round {round}");
        assert!(!s.manifest_exists(&r, &old).await.unwrap());
        assert!(s.manifest_delete(&r, &new).await.unwrap());
    }
}

/// Pushes and deletes of the same manifest at once: whatever the order, every
/// tag left points at a manifest that exists.
pub async fn tags_never_point_at_deleted_manifests<S: Storage + ?Sized>(s: &S) {
    let r = repo("man/dangling");
    let digest = put_image(s, &r, 1, &["first"]).await;
    let bytes = s.manifest_get(&r, &digest).await.unwrap().unwrap().bytes;
    for round in 0..20 {
        let name = format!("t{round}");
        let put = put_of(bytes.clone(), OCI_MANIFEST, &[], &[], &[&name]);
        let (put, deleted) = tokio::join!(s.manifest_put(&r, put), s.manifest_delete(&r, &digest));
        put.unwrap();
        deleted.unwrap();
        for t in s.tags(&r).await.unwrap().unwrap_or_default() {
            let target = s.tag_get(&r, &tag(&t)).await.unwrap().expect("a listed tag");
            assert!(
                s.manifest_exists(&r, &target).await.unwrap(),
                "round {round}: tag {t} points at a deleted manifest"
            );
        }
        let exists = s.manifest_exists(&r, &digest).await.unwrap();
        assert_eq!(s.tag_get(&r, &tag(&name)).await.unwrap().is_some(), exists, "round {round}");
    }
}

pub async fn referrers_by_subject<S: Storage + ?Sized>(s: &S) {
    let r = repo("man/referrers");
    let subject = put_image(s, &r, 1, &["v1"]).await;
    let unrelated = put_image(s, &r, 2, &[]).await;
    assert_eq!(s.referrers(&r, &subject).await.unwrap(), []);

    let mut expected = Vec::new();
    for seed in 10..15 {
        expected.push(put_referrer(s, &r, &subject, seed).await);
    }
    let other = put_referrer(s, &r, &unrelated, 20).await;
    expected.sort_by(|a, b| a.digest.cmp(&b.digest));
    assert_eq!(s.referrers(&r, &subject).await.unwrap(), expected);
    assert_eq!(s.referrers(&r, &unrelated).await.unwrap(), [other]);

    // The subject need not exist; referrers are per repository.
    let absent = sha256(b"not pushed (yet)");
    let early = put_referrer(s, &r, &absent, 30).await;
    assert_eq!(s.referrers(&r, &absent).await.unwrap(), [early]);
    assert_eq!(s.referrers(&repo("man/referrers-other"), &subject).await.unwrap(), []);
    assert_eq!(s.referrers(&r, &sha256(b"nothing refers to this")).await.unwrap(), []);
}

// ---------------------------------------------------------------- catalog

pub async fn catalog_lists_repositories_with_content<S: Storage + ?Sized>(s: &S) {
    assert_eq!(s.repositories().await.unwrap(), Vec::<String>::new());

    // Sessions, refused pushes and failed mounts make no repository.
    let id = s.upload_start(&repo("only/session"), Algorithm::Sha256).await.unwrap();
    s.upload_append(&repo("only/session"), id, Chunk::default(), body(&[b"x"])).await.unwrap();
    let _ = s.blob_put(&repo("refused"), &sha256(b"a"), body(&[b"b"])).await;
    assert!(!s.blob_mount(&repo("unmounted"), &sha256(b"a"), None).await.unwrap());
    let missing = put_of(index(&[]), OCI_INDEX, &[&sha256(b"a")], &[], &[]);
    assert!(s.manifest_put(&repo("refused/manifest"), missing).await.is_err());
    assert_eq!(s.repositories().await.unwrap(), Vec::<String>::new());

    let layer = put_blob(s, &repo("b/nested/x"), b"layer").await;
    assert_eq!(s.repositories().await.unwrap(), ["b/nested/x"]);
    assert!(s.blob_mount(&repo("a-b"), &layer, Some(&repo("b/nested/x"))).await.unwrap());
    s.manifest_put(&repo("a"), put_of(index(&[]), OCI_INDEX, &[], &[], &[])).await.unwrap();
    put_blob(s, &repo("a/b"), b"layer").await;
    let id = s.upload_start(&repo("a.b"), Algorithm::Sha256).await.unwrap();
    s.upload_finish(&repo("a.b"), id, &layer, Some((Chunk::default(), body(&[b"layer"])))).await.unwrap();
    put_blob(s, &repo("a0"), b"layer").await;
    put_blob(s, &repo("b"), b"layer").await;
    // '-' < '.' < '/' < '0': a listing sorted on an encoded form gets this wrong.
    assert_eq!(s.repositories().await.unwrap(), ["a", "a-b", "a.b", "a/b", "a0", "b", "b/nested/x"]);
}

/// A repository whose content is all deleted leaves the catalog, at the latest
/// after a purge of everything (age zero); repositories nested in it or beside it
/// stay.
pub async fn catalog_forgets_emptied_repositories<S: Storage + ?Sized>(s: &S) {
    let (a, nested, beside) = (repo("gone"), repo("gone/kept"), repo("gone-kept"));
    let manifest = put_image(s, &a, 1, &["latest"]).await;
    put_blob(s, &nested, b"nested").await;
    put_blob(s, &beside, b"beside").await;
    assert_eq!(s.repositories().await.unwrap(), ["gone", "gone-kept", "gone/kept"]);

    assert!(s.manifest_delete(&a, &manifest).await.unwrap());
    for blob in [sha256(b"{}"), sha256(&pattern(64, 1))] {
        assert!(s.blob_delete(&a, &blob).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.purge(Duration::ZERO).await.unwrap();
    assert_eq!(s.repositories().await.unwrap(), ["gone-kept", "gone/kept"]);
    assert_eq!(s.tags(&nested).await.unwrap(), Some(vec![]));
    assert_eq!(read(s, &nested, &sha256(b"nested"), 0..6).await, b"nested");

    // And comes back with new content.
    put_blob(s, &a, b"back").await;
    assert_eq!(s.repositories().await.unwrap(), ["gone", "gone-kept", "gone/kept"]);
}

/// `purge(age)` removes sessions not written to for `age` and keeps the others.
pub async fn purge_removes_only_old_sessions<S: Storage + ?Sized>(s: &S) {
    let r = repo("purge/me");
    let old = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    s.upload_append(&r, old, Chunk::default(), body(&[b"old"])).await.unwrap();
    let old_untouched = s.upload_start(&repo("purge/other"), Algorithm::Sha512).await.unwrap();
    let revived = s.upload_start(&r, Algorithm::Sha256).await.unwrap();
    // Margins of 1.5 s either way, so a loaded machine does not make this flaky.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    s.upload_append(&r, revived, Chunk::default(), body(&[b"still here"])).await.unwrap();
    let fresh = s.upload_start(&r, Algorithm::Sha256).await.unwrap();

    assert_eq!(s.purge(Duration::from_millis(1500)).await.unwrap(), 2);
    expect_upload_unknown(s.upload_offset(&r, old).await, "old session after purge");
    expect_upload_unknown(s.upload_offset(&repo("purge/other"), old_untouched).await, "old empty session after purge");
    assert_eq!(s.upload_offset(&r, revived).await.unwrap(), 10);
    assert_eq!(s.upload_offset(&r, fresh).await.unwrap(), 0);

    // What survived still works, and a generous age purges nothing.
    assert_eq!(s.purge(Duration::from_secs(3600)).await.unwrap(), 0);
    let d = sha256(b"still here!");
    assert_eq!(s.upload_finish(&r, revived, &d, Some((Chunk::default(), body(&[b"!"])))).await.unwrap(), 11);
    assert_eq!(read(s, &r, &d, 0..11).await, b"still here!");
    s.upload_append(&r, fresh, Chunk::default(), body(&[b"x"])).await.unwrap();
}

// ---------------------------------------------------------------- lifecycle

/// A planner that records the snapshot it was shown and returns `plan`.
fn planner(plan: RepoPlan, seen: std::sync::Arc<std::sync::Mutex<Option<RepoSnapshot>>>) -> Planner {
    std::sync::Arc::new(move |_, snap: &RepoSnapshot| {
        *seen.lock().unwrap() = Some(snap.clone());
        plan.clone()
    })
}

fn after(d: Duration) -> std::time::SystemTime {
    std::time::SystemTime::now() + d
}

/// A repository pass shows every manifest (content, push time), tag and link,
/// and deletes the planned tags and manifests (with their referrers entries);
/// a dry run deletes nothing.
pub async fn gc_snapshot_and_plan_under_the_lock<S: Storage + ?Sized>(s: &S) {
    let r = repo("gc/snap");
    let kept = put_image(s, &r, 1, &["keep"]).await;
    let gone = put_image(s, &r, 2, &["drop"]).await;
    let referrer = put_referrer(s, &r, &gone, 3).await;
    let seen = std::sync::Arc::default();
    let plan = RepoPlan {
        tags: vec!["drop".into()],
        manifests: vec![gone.clone(), referrer.digest.clone()],
        ..RepoPlan::default()
    };
    let dry = s
        .collect_repository(&r, planner(plan.clone(), std::sync::Arc::clone(&seen)), after(Duration::ZERO), true)
        .await
        .unwrap();
    assert_eq!(dry.plan, plan);
    assert!(s.manifest_exists(&r, &gone).await.unwrap(), "a dry run deletes nothing");
    let snap = seen.lock().unwrap().take().expect("the planner saw the repository");
    let mut digests: Vec<_> = snap.manifests.iter().map(|m| m.digest.clone()).collect();
    digests.sort();
    let mut want = vec![kept.clone(), gone.clone(), referrer.digest.clone()];
    want.sort();
    assert_eq!(digests, want);
    assert!(snap.manifests.iter().all(|m| m.bytes.as_ref().is_some_and(|b| sha256(b) == m.digest)));
    let mut tags: Vec<_> = snap.tags.iter().map(|t| (t.name.as_str(), t.digest.clone())).collect();
    tags.sort();
    assert_eq!(tags, vec![("drop", gone.clone()), ("keep", kept.clone())]);
    assert_eq!(snap.links.len(), 4, "one config shared, three layers: {:?}", snap.links);

    s.collect_repository(&r, planner(plan, seen), after(Duration::ZERO), false).await.unwrap();
    assert!(!s.manifest_exists(&r, &gone).await.unwrap() && !s.manifest_exists(&r, &referrer.digest).await.unwrap());
    assert_eq!(s.tag_get(&r, &tag("drop")).await.unwrap(), None);
    assert_eq!(s.tag_get(&r, &tag("keep")).await.unwrap(), Some(kept.clone()));
    assert!(s.referrers(&r, &gone).await.unwrap().is_empty());
}

/// Planned links go only if their time is still before the cutoff: a mount
/// after the cutoff was taken refreshes the link, and it stays.
pub async fn gc_removes_only_links_still_old<S: Storage + ?Sized>(s: &S) {
    let (r, other) = (repo("gc/links"), repo("gc/other"));
    let old = put_blob(s, &r, b"old layer").await;
    let remounted = put_blob(s, &r, b"remounted layer").await;
    put_blob(s, &other, b"remounted layer").await;
    let cutoff = after(Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(40)).await;
    assert!(s.blob_mount(&r, &remounted, Some(&other)).await.unwrap());
    let plan = RepoPlan { links: vec![old.clone(), remounted.clone()], ..RepoPlan::default() };
    let outcome = s.collect_repository(&r, planner(plan, std::sync::Arc::default()), cutoff, false).await.unwrap();
    assert_eq!(outcome.links_removed, 1);
    assert_eq!(s.blob_size(&r, &old).await.unwrap(), None);
    assert!(s.blob_size(&r, &remounted).await.unwrap().is_some(), "the mount's link stays");
}

/// Swept blobs are gone everywhere; one written again after the cutoff, or
/// young, stays; stored_blobs lists sizes.
pub async fn gc_sweep_spares_content_refreshed_by_a_write<S: Storage + ?Sized>(s: &S) {
    let r = repo("gc/sweep");
    let old = put_blob(s, &r, b"unreferenced").await;
    let rewritten = put_blob(s, &r, b"pushed again").await;
    let cutoff = after(Duration::from_millis(20));
    tokio::time::sleep(Duration::from_millis(40)).await;
    put_blob(s, &repo("gc/elsewhere"), b"pushed again").await;
    let young = put_blob(s, &r, b"young").await;
    let stored = s.stored_blobs().await.unwrap();
    let size = |d: &Digest| stored.iter().find(|b| b.digest == *d).map(|b| b.size);
    assert_eq!((size(&old), size(&rewritten), size(&young)), (Some(12), Some(12), Some(5)));
    let deleted = s.sweep_blobs(vec![old.clone(), rewritten.clone(), young.clone()], cutoff).await.unwrap();
    assert_eq!(deleted, vec![(old.clone(), 12)]);
    assert_eq!(s.blob_size(&r, &old).await.unwrap(), None);
    assert_eq!(read(s, &r, &rewritten, 0..12).await, b"pushed again");
    assert_eq!(read(s, &r, &young, 0..5).await, b"young");
}

pub async fn gc_one_collector_at_a_time<S: Storage + ?Sized>(s: &S) {
    let first = s.collector_lock().await.unwrap().expect("free at first");
    assert!(s.collector_lock().await.unwrap().is_none(), "held by the first");
    drop(first);
    assert!(s.collector_lock().await.unwrap().is_some(), "free again");
}

pub async fn gc_report_round_trips<S: Storage + ?Sized>(s: &S) {
    assert_eq!(s.load_report().await.unwrap(), None);
    s.save_report(Bytes::from_static(b"{\"usage\":{}}")).await.unwrap();
    assert_eq!(s.load_report().await.unwrap().as_deref(), Some(&b"{\"usage\":{}}"[..]));
}

pub async fn probe_leaves_nothing_behind<S: Storage + ?Sized>(s: &S) {
    for _ in 0..3 {
        s.probe().await.expect("a healthy storage passes the probe");
    }
    assert!(s.repositories().await.unwrap().is_empty());
    assert!(s.stored_blobs().await.unwrap().is_empty(), "the probe is no blob");
    assert_eq!(s.purge(Duration::ZERO).await.unwrap(), 0, "and no upload session");
}
