//! Store file growth: 1,000,000 writes (updates of 1 KiB ConfigMaps) to 1,000 objects, 64
//! writers at a time, with the default history; the store file and its write-ahead log are
//! measured along the way and at the end (the file must stay bounded: compaction of history,
//! free pages reused).
//!
//! Run: `cargo bench --bench store` (`WRITES=...` to change the count).

use ferrokube::store::{Op, Store, DEFAULT_HISTORY};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

const OBJECTS: usize = 1000;
const WRITERS: usize = 64;

fn size(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

#[tokio::main]
async fn main() {
    let writes: usize = std::env::var("WRITES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let path = dir.path().join("state.redb");
    let wal = dir.path().join("state.redb.wal");
    let store = Arc::new(Store::open(&path, DEFAULT_HISTORY).unwrap());
    let value = "x".repeat(1024);
    let object = move |i: usize, n: usize| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i}"), "namespace": "bench"}, "data": {"v": value, "n": n.to_string()}});
    for i in 0..OBJECTS {
        store.write(Op::Create { key: format!("/core/configmaps/bench/cm-{i}"), object: object(i, 0) }).await.unwrap();
    }
    println!("store growth: {writes} updates of {OBJECTS} objects (1 KiB each), {WRITERS} writers, history {DEFAULT_HISTORY}");
    println!("after the creates: file {:.1} MiB", mib(size(&path)));
    let start = Instant::now();
    let per = writes / WRITERS;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (store, object) = (store.clone(), object.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0..per {
                let i = (w + n * WRITERS) % OBJECTS;
                store.write(Op::Update { key: format!("/core/configmaps/bench/cm-{i}"), object: object(i, n), expect: None }).await.unwrap();
            }
        }));
    }
    let mut peak = 0;
    let mut report = Instant::now();
    while tasks.iter().any(|t| !t.is_finished()) {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        peak = peak.max(size(&path));
        if report.elapsed().as_secs() >= 15 {
            println!("  {:>5.0} s: rev {}, file {:.1} MiB, log {:.1} MiB", start.elapsed().as_secs_f64(), store.revision().unwrap(), mib(size(&path)), mib(size(&wal)));
            report = Instant::now();
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    println!("{} updates in {:.1} s ({:.0}/s)", per * WRITERS, elapsed.as_secs_f64(), (per * WRITERS) as f64 / elapsed.as_secs_f64());
    println!("file at the end: {:.1} MiB (peak {:.1} MiB), write-ahead log {:.1} MiB", mib(size(&path)), mib(peak.max(size(&path))), mib(size(&wal)));
    store.shutdown().await;
    println!("after shutdown (checkpoint): file {:.1} MiB", mib(size(&path)));
}
