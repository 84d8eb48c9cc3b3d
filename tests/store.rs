//! Store behaviour: revisions, compare-and-swap, snapshots, watch replay, compaction and
//! recovery after reopening.

use ferrokube::store::{EventType, Op, Store, StoreError};
use serde_json::{json, Value};

fn obj(name: &str, v: i64) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "ns"}, "data": {"v": v.to_string()}})
}

fn key(name: &str) -> String {
    format!("/core/configmaps/ns/{name}")
}

fn rv_of(json: &[u8]) -> String {
    let v: Value = serde_json::from_slice(json).unwrap();
    v["metadata"]["resourceVersion"].as_str().unwrap().to_string()
}

async fn create(s: &Store, name: &str, v: i64) -> u64 {
    s.write(Op::Create { key: key(name), object: obj(name, v) }).await.unwrap().revision
}

#[tokio::test]
async fn revisions_are_global_and_stamped() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("db"), 100).unwrap();
    let r1 = create(&s, "a", 1).await;
    let r2 = create(&s, "b", 1).await;
    assert_eq!(r2, r1 + 1);
    let got = s.get(&key("a")).unwrap().unwrap();
    assert_eq!(got.revision, r1);
    assert_eq!(rv_of(&got.json), r1.to_string());
    assert_eq!(s.revision().unwrap(), r2);
    let dup = s.write(Op::Create { key: key("a"), object: obj("a", 2) }).await;
    assert!(matches!(dup, Err(StoreError::AlreadyExists)));
    // A failed write takes no revision.
    assert_eq!(s.revision().unwrap(), r2);
}

#[tokio::test]
async fn compare_and_swap_rejects_stale_writers() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("db"), 100).unwrap();
    let r1 = create(&s, "a", 1).await;
    let ok = s.write(Op::Update { key: key("a"), object: obj("a", 2), expect: Some(r1) }).await.unwrap();
    assert_eq!(ok.kind, EventType::Modified);
    let stale = s.write(Op::Update { key: key("a"), object: obj("a", 3), expect: Some(r1) }).await;
    assert!(matches!(stale, Err(StoreError::Conflict { current }) if current == ok.revision));
    let stale_delete = s.write(Op::Delete { key: key("a"), expect: Some(r1) }).await;
    assert!(matches!(stale_delete, Err(StoreError::Conflict { .. })));
    let missing = s.write(Op::Update { key: key("zz"), object: obj("zz", 1), expect: None }).await;
    assert!(matches!(missing, Err(StoreError::NotFound)));
    let del = s.write(Op::Delete { key: key("a"), expect: Some(ok.revision) }).await.unwrap();
    assert_eq!(del.kind, EventType::Deleted);
    assert_eq!(rv_of(&del.object), del.revision.to_string());
    assert!(s.get(&key("a")).unwrap().is_none());
}

#[tokio::test]
async fn concurrent_writers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("db"), 10_000).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move { create(&s, &format!("c{i:03}"), i).await }));
    }
    let mut revs = Vec::new();
    for t in tasks {
        revs.push(t.await.unwrap());
    }
    revs.sort();
    revs.dedup();
    assert_eq!(revs.len(), 200, "every write has its own revision");
    let page = s.list("/core/configmaps/ns/", None, 0, None, &|_| true).unwrap();
    assert_eq!(page.items.len(), 200);
}

#[tokio::test]
async fn paged_list_is_a_consistent_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("db"), 1000).unwrap();
    for i in 0..10 {
        create(&s, &format!("k{i}"), i).await;
    }
    let prefix = "/core/configmaps/ns/";
    let first = s.list(prefix, None, 4, None, &|_| true).unwrap();
    assert_eq!(first.items.len(), 4);
    let after = first.next_key.clone().expect("more pages");
    assert_eq!(s.count_after(prefix, &after).unwrap(), 6);
    // Changes after the first page: delete k5, modify k6, add k45.
    let k5 = s.get(&key("k5")).unwrap().unwrap().revision;
    s.write(Op::Delete { key: key("k5"), expect: Some(k5) }).await.unwrap();
    s.write(Op::Update { key: key("k6"), object: obj("k6", 600), expect: None }).await.unwrap();
    create(&s, "k45", 45).await;
    let rest = s.list(prefix, Some(&after), 0, Some(first.revision), &|_| true).unwrap();
    let names: Vec<String> = rest.items.iter().map(|(k, _)| k.rsplit('/').next().unwrap().to_string()).collect();
    assert_eq!(names, vec!["k4", "k5", "k6", "k7", "k8", "k9"]);
    let k6: Value = serde_json::from_slice(&rest.items[2].1).unwrap();
    assert_eq!(k6["data"]["v"], "6", "the snapshot shows k6 as it was");
    // A current list sees the changes.
    let now = s.list(prefix, None, 0, None, &|_| true).unwrap();
    assert!(now.items.iter().any(|(k, _)| k.ends_with("k45")));
    assert!(!now.items.iter().any(|(k, _)| k.ends_with("/k5")));
}

#[tokio::test]
async fn watch_replays_history_then_follows() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("db"), 1000).unwrap();
    let r1 = create(&s, "a", 1).await;
    create(&s, "b", 1).await;
    s.write(Op::Update { key: key("a"), object: obj("a", 2), expect: None }).await.unwrap();
    let mut w = s.watch("/core/configmaps/ns/", r1).unwrap();
    let e1 = w.next().await.unwrap();
    assert_eq!((e1.kind, e1.key.as_str()), (EventType::Added, "/core/configmaps/ns/b"));
    let e2 = w.next().await.unwrap();
    assert_eq!(e2.kind, EventType::Modified);
    assert!(e2.prev.is_some());
    // Live events after the replay, filtered by prefix.
    s.write(Op::Create { key: "/core/configmaps/other/x".into(), object: obj("x", 1) }).await.unwrap();
    let r = create(&s, "c", 1).await;
    let e3 = tokio::time::timeout(std::time::Duration::from_secs(5), w.next()).await.unwrap().unwrap();
    assert_eq!((e3.revision, e3.key.as_str()), (r, "/core/configmaps/ns/c"));
}

#[tokio::test]
async fn history_is_bounded_and_old_revisions_expire() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("db"), 5).unwrap();
    let first = create(&s, "a0", 0).await;
    for i in 1..20 {
        create(&s, &format!("a{i}"), i).await;
    }
    let compacted = s.compacted().unwrap();
    assert_eq!(compacted, s.revision().unwrap() - 5);
    assert!(matches!(s.watch("/core/", first), Err(StoreError::Expired { .. })));
    assert!(matches!(s.list("/core/", None, 0, Some(first), &|_| true), Err(StoreError::Expired { .. })));
    // Within the history the watch works.
    let mut w = s.watch("/core/", compacted).unwrap();
    assert_eq!(w.next().await.unwrap().revision, compacted + 1);
}

#[tokio::test]
async fn reopen_keeps_objects_revisions_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let (rev_a, rev_end) = {
        let s = Store::open(&path, 100).unwrap();
        let a = create(&s, "a", 1).await;
        create(&s, "b", 1).await;
        (a, s.revision().unwrap())
    };
    // The writer thread holds the database until its channel closes.
    let s = loop {
        match Store::open(&path, 100) {
            Ok(s) => break s,
            Err(StoreError::Storage(m)) if m.contains("already open") => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(s.revision().unwrap(), rev_end);
    assert_eq!(s.get(&key("a")).unwrap().unwrap().revision, rev_a);
    let mut w = s.watch("/core/", rev_a).unwrap();
    assert_eq!(w.next().await.unwrap().key, key("b"));
    assert_eq!(create(&s, "c", 1).await, rev_end + 1);
}

/// Opens `path`, waiting for an earlier store's writer thread to let go of it.
async fn open_when_free(path: &std::path::Path) -> Store {
    loop {
        match Store::open(path, 100) {
            Ok(s) => break s,
            Err(StoreError::Storage(m)) if m.contains("already open") => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn the_last_checkpoint_and_the_log_hold_every_acknowledged_write() {
    // What a crash leaves: the store file as of its last durable commit, and the log. Taken
    // here by copying the file at a checkpoint, then the log after more writes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let wal = dir.path().join("db.wal");
    let at_checkpoint = {
        let s = Store::open(&path, 100).unwrap();
        for i in 0..5 {
            create(&s, &format!("before-{i}"), i).await;
        }
        // A shutdown's flush is a checkpoint.
        s.shutdown().await;
        s.revision().unwrap()
    };
    let saved = std::fs::read(&path).unwrap();
    let s = open_when_free(&path).await;
    let mut revs = Vec::new();
    for i in 0..7 {
        revs.push(create(&s, &format!("after-{i}"), i).await);
    }
    s.write(Op::Update { key: key("before-0"), object: obj("before-0", 100), expect: None }).await.unwrap();
    s.write(Op::Delete { key: key("before-1"), expect: None }).await.unwrap();
    let end = s.revision().unwrap();
    let log = std::fs::read(&wal).unwrap();
    drop(s);
    let crashed = tempfile::tempdir().unwrap();
    let cpath = crashed.path().join("db");
    std::fs::write(&cpath, &saved).unwrap();
    std::fs::write(crashed.path().join("db.wal"), &log).unwrap();
    // A torn record at the end (a batch whose sync never finished) is no write.
    let mut torn = log.clone();
    torn.extend_from_slice(&[0, 0, 0, 40, 1, 2, 3, 4, 5, 6]);
    std::fs::write(crashed.path().join("db.wal"), &torn).unwrap();

    let s = open_when_free(&cpath).await;
    assert_eq!(s.revision().unwrap(), end, "replayed up to the last acknowledged write (checkpoint at {at_checkpoint})");
    for (i, rev) in revs.iter().enumerate() {
        assert_eq!(s.get(&key(&format!("after-{i}"))).unwrap().unwrap().revision, *rev);
    }
    let updated: Value = serde_json::from_slice(&s.get(&key("before-0")).unwrap().unwrap().json).unwrap();
    assert_eq!(updated["data"]["v"], "100");
    assert!(s.get(&key("before-1")).unwrap().is_none(), "a logged delete is replayed");
    // The history is whole: a watch from the checkpoint sees every later event in order.
    let mut w = s.watch("/core/", at_checkpoint).unwrap();
    for rev in at_checkpoint + 1..=end {
        assert_eq!(w.next().await.unwrap().revision, rev);
    }
    assert_eq!(create(&s, "next", 1).await, end + 1, "revisions continue after the replay");
}

#[tokio::test]
async fn a_log_that_does_not_continue_the_file_is_not_replayed() {
    // A store file put back from an older copy must not take a newer store's log.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = Store::open(&path, 100).unwrap();
    create(&s, "a", 1).await;
    s.shutdown().await;
    let old = std::fs::read(&path).unwrap();
    let old_rev = s.revision().unwrap();
    drop(s);
    let s = open_when_free(&path).await;
    for i in 0..3 {
        create(&s, &format!("x{i}"), i).await;
    }
    // A rewrite is a checkpoint too; the log then starts over at the next revision.
    s.rewrite().await.unwrap();
    for i in 0..3 {
        create(&s, &format!("y{i}"), i).await;
    }
    let log = std::fs::read(dir.path().join("db.wal")).unwrap();
    drop(s);
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("db"), &old).unwrap();
    std::fs::write(other.path().join("db.wal"), &log).unwrap();
    let s = open_when_free(&other.path().join("db")).await;
    assert_eq!(s.revision().unwrap(), old_rev);
    assert!(s.get(&key("y0")).unwrap().is_none());
}

#[tokio::test]
async fn foreign_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    std::fs::write(&path, b"this is not a database file at all, it is text").unwrap();
    assert!(Store::open(&path, 100).is_err());
}

fn sealer(providers: &str) -> ferrokube::store::crypt::Sealer {
    let text = format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers: {providers}\n");
    ferrokube::store::crypt::Sealer::from_config(text.as_bytes()).unwrap()
}

fn file_has(path: &std::path::Path, needle: &str) -> bool {
    let bytes = std::fs::read(path).unwrap();
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Whether the store file at `path` or its write-ahead log holds `needle`.
fn on_disk(path: &std::path::Path, needle: &str) -> bool {
    let mut wal = path.as_os_str().to_owned();
    wal.push(".wal");
    let wal = std::path::PathBuf::from(wal);
    file_has(path, needle) || (wal.exists() && file_has(&wal, needle))
}

fn secret(name: &str, value: &str) -> Value {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(value);
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "ns"}, "data": {"password": b64}})
}

#[tokio::test]
async fn resealing_and_rewriting_leave_no_plain_secret_in_the_file() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = Store::open(&path, 100).unwrap();
    let value = "correct-horse-battery-staple";
    let b64 = base64::engine::general_purpose::STANDARD.encode(value);
    let k = "/core/secrets/ns/db".to_string();
    let first = s.write(Op::Create { key: k.clone(), object: secret("db", value) }).await.unwrap().revision;
    s.write(Op::Update { key: k.clone(), object: secret("db", value), expect: None }).await.unwrap();
    create(&s, "plain", 1).await;
    assert!(on_disk(&path, &b64), "plain Secrets are stored as written");

    let key1 = "MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=";
    let done = s.reseal(sealer(&format!("[{{aescbc: {{keys: [{{name: k1, secret: {key1}}}]}}}}, {{identity: {{}}}}]"))).await.unwrap();
    assert_eq!((done.objects, done.events), (1, 2), "the Secret and its two history events");
    s.rewrite().await.unwrap();
    assert!(!on_disk(&path, &b64) && !on_disk(&path, value), "no plain or base64 value after reseal + rewrite, in the file or its log");
    assert!(file_has(&path, "k8s:enc:aescbc:v1:k1:"));
    // Reads, lists, history and revisions are as before.
    let got = s.get(&k).unwrap().unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&got.json).unwrap()["data"]["password"], b64.as_str());
    assert_eq!(s.list("/core/secrets/", None, 0, Some(first), &|_| true).unwrap().items.len(), 1);
    let mut w = s.watch("/core/", first).unwrap();
    let update = w.next().await.unwrap();
    assert_eq!((update.revision, update.prev.is_some()), (first + 1, true), "history replays, old images included");
    assert_eq!(s.seal_census("/core/secrets/").unwrap().into_iter().collect::<Vec<_>>(), vec![("aescbc:k1".to_string(), 1)]);
    // New writes are sealed; other kinds stay plain.
    s.write(Op::Create { key: "/core/secrets/ns/new".into(), object: secret("new", "another-secret-value") }).await.unwrap();
    assert!(!on_disk(&path, "another-secret-value") && !on_disk(&path, &base64::engine::general_purpose::STANDARD.encode("another-secret-value")));
    assert!(on_disk(&path, "\"name\":\"plain\""));

    // Reopened with the configuration, everything reads back; without it, the read fails loudly.
    drop(w);
    drop(s);
    let reopen = |sealer: ferrokube::store::crypt::Sealer| loop {
        match Store::open_sealed(&path, 100, sealer.clone()) {
            Ok(s) => break s,
            Err(StoreError::Storage(m)) if m.contains("already open") => std::thread::sleep(std::time::Duration::from_millis(20)),
            Err(e) => panic!("{e}"),
        }
    };
    let s = reopen(ferrokube::store::crypt::Sealer::default());
    assert!(matches!(s.get(&k), Err(StoreError::Corrupt { .. })));
    drop(s);
    let s = reopen(sealer(&format!("[{{identity: {{}}}}, {{aescbc: {{keys: [{{name: k1, secret: {key1}}}]}}}}]")));
    assert!(s.get(&k).unwrap().is_some());
    // Decrypting back to plain (identity first).
    let done = s.reseal(sealer(&format!("[{{identity: {{}}}}, {{aescbc: {{keys: [{{name: k1, secret: {key1}}}]}}}}]"))).await.unwrap();
    assert_eq!(done.objects, 2);
    assert_eq!(s.seal_census("/core/secrets/").unwrap().into_iter().collect::<Vec<_>>(), vec![("identity".to_string(), 2)]);
}
