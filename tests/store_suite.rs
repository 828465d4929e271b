//! The contract every target must keep, run against each implementation
//! (litestream's replica-client suite is the model). Only the directory
//! target runs against a plain folder; the S3 target against a real
//! SeaweedFS server on 127.0.0.1.

use chrono::{Duration, TimeZone, Utc};
use lifeboat::aligned::AlignedBuf;
use lifeboat::backup::clean_leftovers;
use lifeboat::manifest::{Manifest, FORMAT};
use lifeboat::store::{AnyTarget, Target, TargetSpec, Upload};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

fn manifest(id: &str, body: &[u8]) -> Manifest {
    let t = lifeboat::artifact::id_time(id).unwrap();
    Manifest {
        format: FORMAT.into(),
        id: id.into(),
        artifact: format!("{id}.tar.zst"),
        name: "suite-0".into(),
        namespace: "default".into(),
        source: "files".into(),
        paths: vec!["/data".into()],
        started_at: t,
        finished_at: t,
        compression: "zstd:3".into(),
        encryption: "none".into(),
        recipients: Vec::new(),
        size: body.len() as u64,
        sha256: hex::encode(Sha256::digest(body)),
        entries: 1,
        bytes_in: 1,
        warnings: vec![],
        tool_version: "test".into(),
        source_meta: serde_json::json!({}),
        kubernetes: None,
        level: 0,
        base: None,
        chain: None,
        state: None,
        wal: None,
        layout: Default::default(),
    }
}

async fn upload(t: &AnyTarget, m: &Manifest, body: &[u8]) {
    let mut up = t.begin(&m.artifact).await.unwrap();
    for chunk in body.chunks(1000) {
        up.write(AlignedBuf::from_slice(chunk)).await.unwrap();
    }
    up.commit(m).await.unwrap();
}

async fn ids(t: &AnyTarget) -> Vec<String> {
    t.list()
        .await
        .unwrap()
        .artifacts
        .into_iter()
        .map(|a| a.manifest.id)
        .collect()
}

async fn suite(t: AnyTarget) {
    assert!(
        ids(&t).await.is_empty(),
        "{}: a new target lists nothing",
        t.describe()
    );
    t.check().await.unwrap();

    // An aborted upload leaves nothing.
    let mut up = t.begin("20260101T000000Z-files.tar.zst").await.unwrap();
    up.write(AlignedBuf::from_slice(b"half")).await.unwrap();
    up.abort().await;
    assert!(ids(&t).await.is_empty());
    assert!(t.leftovers().await.unwrap().is_empty());

    // An upload never committed (the process died) is not listed, only a
    // leftover. Larger than one S3 part, so S3 has a multipart upload open.
    let mut up = t.begin("20260101T000001Z-files.tar.zst").await.unwrap();
    up.write(AlignedBuf::from_slice(&vec![
        7u8;
        lifeboat::store::s3::PART_SIZE_MIN
            + 1
    ]))
    .await
    .unwrap();
    drop(up);
    assert!(ids(&t).await.is_empty());
    assert_eq!(t.leftovers().await.unwrap().len(), 1);

    // Committed artifacts are listed newest first and read back intact.
    let old_body = lifeboat_tests::noise(5000, 1);
    let new_body = lifeboat_tests::noise(7000, 2);
    let old = manifest("20260102T000000Z-files", &old_body);
    let new = manifest("20260103T000000Z-files", &new_body);
    upload(&t, &old, &old_body).await;
    upload(&t, &new, &new_body).await;
    assert_eq!(ids(&t).await, vec![new.id.clone(), old.id.clone()]);
    let listed = t.list().await.unwrap();
    assert_eq!(listed.artifacts[0].manifest, new);
    let mut read = Vec::new();
    t.open(&new)
        .await
        .unwrap()
        .read_to_end(&mut read)
        .await
        .unwrap();
    assert_eq!(read, new_body);

    // A committed name is never overwritten.
    assert!(t.begin(&new.artifact).await.is_err());

    // Verification is recorded beside the manifest.
    let at = Utc.with_ymd_and_hms(2026, 1, 4, 0, 0, 0).unwrap();
    t.mark_verified(&old, at).await.unwrap();
    let listed = t.list().await.unwrap();
    assert_eq!(listed.artifacts[1].verified_at, Some(at));
    assert_eq!(listed.artifacts[0].verified_at, None);

    // Delete removes the artifact and what belongs to it.
    t.delete(&old).await.unwrap();
    assert_eq!(ids(&t).await, vec![new.id.clone()]);

    // Leftovers go only once they are older than a day.
    clean_leftovers(&t, Utc::now(), true).await.unwrap();
    assert_eq!(t.leftovers().await.unwrap().len(), 1);
    clean_leftovers(&t, Utc::now() + Duration::days(2), true)
        .await
        .unwrap();
    assert!(t.leftovers().await.unwrap().is_empty());
    assert_eq!(
        ids(&t).await,
        vec![new.id.clone()],
        "cleanup must not touch committed artifacts"
    );
}

#[tokio::test]
async fn directory_target_keeps_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = TargetSpec::parse(&format!("file://{}", tmp.path().display())).unwrap();
    suite(spec.open("default", "suite-0", &Default::default()).await).await;
}

#[tokio::test]
async fn s3_target_keeps_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let weed = lifeboat_tests::Seaweed::start(tmp.path());
    weed.create_bucket("suite").await;
    let spec = TargetSpec::parse("s3://suite/some/prefix").unwrap();
    suite(spec.open("default", "suite-0", &weed.options()).await).await;
}

#[tokio::test]
async fn retention_never_deletes_the_newest_verified_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let t = TargetSpec::parse(tmp.path().to_str().unwrap())
        .unwrap()
        .open("default", "r-0", &Default::default())
        .await;
    let body = b"x".to_vec();
    let made = [
        "20260101T000000Z-files",
        "20260102T000000Z-files",
        "20260103T000000Z-files",
    ];
    for id in made {
        upload(&t, &manifest(id, &body), &body).await;
    }
    t.mark_verified(&manifest(made[0], &body), Utc::now())
        .await
        .unwrap();
    let policy = lifeboat::retention::Policy::parse("last=1").unwrap();
    lifeboat::backup::apply_retention(&t, &policy)
        .await
        .unwrap();
    assert_eq!(
        ids(&t).await,
        vec![made[2].to_string(), made[0].to_string()]
    );
}

#[tokio::test]
async fn two_uploads_of_one_name_never_overwrite_each_other() {
    // An operator's backup-now and the scheduled run in the same second.
    let tmp = tempfile::tempdir().unwrap();
    let t = TargetSpec::parse(tmp.path().to_str().unwrap())
        .unwrap()
        .open("default", "race-0", &Default::default())
        .await;
    let (a, b) = (
        lifeboat_tests::noise(3000, 1),
        lifeboat_tests::noise(3000, 2),
    );
    let m = manifest("20260101T000000Z-files", &a);
    let mut up_a = t.begin(&m.artifact).await.unwrap();
    let mut up_b = t.begin(&m.artifact).await.unwrap();
    up_a.write(AlignedBuf::from_slice(&a)).await.unwrap();
    up_b.write(AlignedBuf::from_slice(&b)).await.unwrap();
    up_a.commit(&m).await.unwrap();
    let mb = manifest("20260101T000000Z-files", &b);
    assert!(
        up_b.commit(&mb).await.is_err(),
        "the second commit must fail"
    );
    let listing = t.list().await.unwrap();
    assert_eq!(listing.artifacts.len(), 1);
    assert_eq!(listing.artifacts[0].manifest, m);
    let mut read = Vec::new();
    t.open(&m)
        .await
        .unwrap()
        .read_to_end(&mut read)
        .await
        .unwrap();
    assert_eq!(read, a, "the committed bytes are the first upload's");
}

#[tokio::test]
async fn a_bad_manifest_is_reported_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = TargetSpec::parse(tmp.path().to_str().unwrap()).unwrap();
    let t = spec.open("default", "suite-0", &Default::default()).await;
    let body = b"x".to_vec();
    let good = manifest("20260102T000000Z-files", &body);
    upload(&t, &good, &body).await;
    let hist = tmp.path().join("default/suite-0");
    std::fs::write(
        hist.join("20260103T000000Z-files.manifest.json"),
        b"{ not json",
    )
    .unwrap();
    std::fs::write(
        hist.join("20260104T000000Z-files.manifest.json"),
        br#"{"format":"lifeboat/v1","artifact":"../../etc/passwd"}"#,
    )
    .unwrap();
    let listing = t.list().await.unwrap();
    assert_eq!(listing.artifacts.len(), 1);
    assert_eq!(listing.problems.len(), 2, "{:?}", listing.problems);
}
