//! Hot reload on a real running proxy: every trigger (atomic rename, in-place write,
//! Kubernetes symlink swap, POST /reload; SIGHUP is in cli.rs), checked through real
//! requests; an invalid file never breaks the running config; listeners come and go;
//! reloads under load fail no request and leak no file descriptor.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A fresh folder for one test's config files.
fn folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringlb-reload-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

fn config(backends: &[(&str, SocketAddr, u32)], extra: &str) -> String {
    yaml_for(
        backends,
        &format!("admin:\n  bind: \"127.0.0.1:0\"\n{extra}"),
    )
}

/// Replaces `path` the way editors and config tools do: write a temp file, rename it over.
fn replace_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn post(proxy: &TestProxy, path: &str) -> (u16, Value) {
    let addr = proxy.admin.expect("admin listener");
    let client = client();
    let req = http::Request::post(format!("http://{addr}{path}"))
        .body(Default::default())
        .unwrap();
    let r = reply(client.request(req).await.unwrap()).await;
    (
        r.status.as_u16(),
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

async fn status(proxy: &TestProxy) -> Value {
    let addr = proxy.admin.expect("admin listener");
    let client = client();
    let r = reply(
        client
            .get(format!("http://{addr}/status").parse().unwrap())
            .await
            .unwrap(),
    )
    .await;
    serde_json::from_str(&r.body).unwrap()
}

/// Every key is answered by the backend the live ring names, and `/route` agrees.
async fn assert_serving_as_routed(proxy: &TestProxy, keys: usize) {
    for i in 0..keys {
        let path = format!("/r/{i}");
        let reply = proxy.get(&path).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(
            reply.served_by.as_deref(),
            Some(proxy.route(path.as_bytes())[0].as_str()),
            "{path}"
        );
    }
}

#[tokio::test]
async fn post_reload_adds_removes_and_reweights_backends() {
    let (a, b, c) = (
        TestBackend::spawn("a").await,
        TestBackend::spawn("b").await,
        TestBackend::spawn("c").await,
    );
    let dir = folder("post");
    let path = dir.join("lb.yaml");
    std::fs::write(&path, config(&[("a", a.addr, 1), ("b", b.addr, 1)], "")).unwrap();
    let proxy = TestProxy::spawn_file(&path).await;
    assert_serving_as_routed(&proxy, 100).await;
    let before: Vec<Vec<String>> = (0..200)
        .map(|i| proxy.route(format!("/r/{i}").as_bytes()))
        .collect();

    // Add c: keys move only onto c.
    replace_by_rename(
        &path,
        &config(&[("a", a.addr, 1), ("b", b.addr, 1), ("c", c.addr, 2)], ""),
    );
    // The watcher sees the rename too: POST answers with its reload's generation, and
    // at most one more reload may follow.
    let (code, body) = post(&proxy, "/reload").await;
    assert_eq!(code, 200);
    assert!(body["generation"].as_u64().unwrap() <= proxy.generation());
    for (i, old) in before.iter().enumerate() {
        let now = proxy.route(format!("/r/{i}").as_bytes());
        assert!(
            now[0] == old[0] || now[0] == "c",
            "/r/{i} moved from {} to {}",
            old[0],
            now[0]
        );
    }
    assert_serving_as_routed(&proxy, 100).await;
    assert!(c.hits() > 0, "the new backend serves");

    // Remove b and re-weight a: b's keys go elsewhere, nobody asks b again.
    replace_by_rename(&path, &config(&[("a", a.addr, 3), ("c", c.addr, 2)], ""));
    assert_eq!(post(&proxy, "/reload").await.0, 200);
    let b_hits = b.hits();
    assert_serving_as_routed(&proxy, 100).await;
    assert_eq!(b.hits(), b_hits, "a removed backend gets no new request");
}

#[tokio::test]
async fn a_file_replaced_by_rename_is_picked_up_by_the_watcher() {
    let (a, b) = (TestBackend::spawn("a").await, TestBackend::spawn("b").await);
    let dir = folder("rename");
    let path = dir.join("lb.yaml");
    std::fs::write(&path, config(&[("a", a.addr, 1)], "")).unwrap();
    let proxy = TestProxy::spawn_file(&path).await;
    replace_by_rename(&path, &config(&[("a", a.addr, 1), ("b", b.addr, 1)], ""));
    wait_until(Duration::from_secs(10), "the watcher to reload", || async {
        proxy.generation() == 2
    })
    .await;
    assert_serving_as_routed(&proxy, 50).await;
    assert!(b.hits() > 0);
}

#[tokio::test]
async fn a_file_written_in_place_is_picked_up_and_a_touch_is_not() {
    let (a, b) = (TestBackend::spawn("a").await, TestBackend::spawn("b").await);
    let dir = folder("inplace");
    let path = dir.join("lb.yaml");
    std::fs::write(&path, config(&[("a", a.addr, 1)], "")).unwrap();
    let proxy = TestProxy::spawn_file(&path).await;
    // Reading, touching and rewriting the same bytes are not changes. (The positive
    // case below shows the watcher is live; this part can only show nothing happened.)
    let same = std::fs::read_to_string(&path).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    std::fs::write(&path, &same).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(proxy.generation(), 1, "unchanged content must not reload");

    std::fs::write(&path, config(&[("a", a.addr, 1), ("b", b.addr, 1)], "")).unwrap();
    wait_until(Duration::from_secs(10), "the watcher to reload", || async {
        proxy.generation() == 2
    })
    .await;
    assert_serving_as_routed(&proxy, 50).await;
}

#[tokio::test]
async fn a_kubernetes_configmap_symlink_swap_is_picked_up() {
    let (a, b) = (TestBackend::spawn("a").await, TestBackend::spawn("b").await);
    let dir = folder("k8s");
    // What the kubelet lays out: lb.yaml -> ..data/lb.yaml, ..data -> ..<timestamp>.
    std::fs::create_dir(dir.join("..v1")).unwrap();
    std::fs::write(dir.join("..v1/lb.yaml"), config(&[("a", a.addr, 1)], "")).unwrap();
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/lb.yaml", dir.join("lb.yaml")).unwrap();
    let proxy = TestProxy::spawn_file(&dir.join("lb.yaml")).await;

    std::fs::create_dir(dir.join("..v2")).unwrap();
    std::fs::write(
        dir.join("..v2/lb.yaml"),
        config(&[("a", a.addr, 1), ("b", b.addr, 1)], ""),
    )
    .unwrap();
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    wait_until(
        Duration::from_secs(10),
        "the symlink swap to reload",
        || async { proxy.generation() == 2 },
    )
    .await;
    assert_serving_as_routed(&proxy, 50).await;
    assert!(b.hits() > 0);
}

#[tokio::test]
async fn an_identical_file_still_answers_a_reload_with_a_new_generation() {
    let a = TestBackend::spawn("a").await;
    let dir = folder("same");
    let path = dir.join("lb.yaml");
    std::fs::write(&path, config(&[("a", a.addr, 1)], "")).unwrap();
    let proxy = TestProxy::spawn_file(&path).await;
    let fingerprint = status(&proxy).await["ring_fingerprint"].clone();
    assert_eq!(
        post(&proxy, "/reload").await,
        (
            200,
            serde_json::json!({ "generation": 2, "restart_required": [] })
        )
    );
    let s = status(&proxy).await;
    assert_eq!(s["generation"], 2);
    assert_eq!(
        s["ring_fingerprint"], fingerprint,
        "nothing changed in the ring"
    );
}

#[tokio::test]
async fn an_invalid_file_changes_nothing_and_says_why() {
    let (a, b) = (TestBackend::spawn("a").await, TestBackend::spawn("b").await);
    let dir = folder("invalid");
    let path = dir.join("lb.yaml");
    let good = config(&[("a", a.addr, 1), ("b", b.addr, 1)], "");
    std::fs::write(&path, &good).unwrap();
    let proxy = TestProxy::spawn_file(&path).await;
    let routes: Vec<Vec<String>> = (0..100)
        .map(|i| proxy.route(format!("/r/{i}").as_bytes()))
        .collect();

    for (bad, says) in [
        ("listeners: [\n", "did not find expected node content"),
        (
            &*good.replace("weight: 1\n", "wieght: 1\n"),
            "unknown field `wieght`",
        ),
        (
            &*good.replace(&a.addr.to_string(), "not-an-address"),
            "expected host:port",
        ),
    ] {
        replace_by_rename(&path, bad);
        let (code, body) = post(&proxy, "/reload").await;
        assert_eq!(code, 422, "{bad}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!("{}:", path.display())) && error.contains(says),
            "{error}"
        );
        assert_eq!(proxy.generation(), 1, "the running config stays");
        let s = status(&proxy).await;
        assert_eq!(s["last_reload"]["result"], "error");
        assert_eq!(s["last_reload"]["error"], error);
        for (i, r) in routes.iter().enumerate() {
            assert_eq!(&proxy.route(format!("/r/{i}").as_bytes()), r);
        }
        assert_serving_as_routed(&proxy, 20).await;
    }
    replace_by_rename(&path, &good);
    assert_eq!(post(&proxy, "/reload").await.0, 200);
    assert_eq!(status(&proxy).await["last_reload"]["error"], Value::Null);
}

#[tokio::test]
async fn listeners_are_added_and_removed() {
    let a = TestBackend::spawn("a").await;
    let dir = folder("listeners");
    let path = dir.join("lb.yaml");
    let extra = dead_addr().await; // a free port for the new listener
    std::fs::write(&path, config(&[("a", a.addr, 1)], "")).unwrap();
    let proxy = TestProxy::spawn_file(&path).await;

    let both = config(&[("a", a.addr, 1)], "").replace(
        "listeners:\n  - bind: \"127.0.0.1:0\"\n",
        &format!("listeners:\n  - bind: \"127.0.0.1:0\"\n  - bind: \"{extra}\"\n"),
    );
    replace_by_rename(&path, &both);
    assert_eq!(post(&proxy, "/reload").await.0, 200);
    let text = raw_exchange(
        extra,
        b"GET /new-listener HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&text), Some(200), "the new listener answers");

    let only_extra = config(&[("a", a.addr, 1)], "")
        .replace("127.0.0.1:0\"\nbackends", &format!("{extra}\"\nbackends"));
    replace_by_rename(&path, &only_extra);
    assert_eq!(post(&proxy, "/reload").await.0, 200);
    let first = proxy.addr;
    wait_until(
        Duration::from_secs(5),
        "the removed listener to refuse connections",
        || async { tokio::net::TcpStream::connect(first).await.is_err() },
    )
    .await;
    let text = raw_exchange(
        extra,
        b"GET /still HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&text), Some(200));

    // A listener that cannot bind fails the reload and changes nothing.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = only_extra.replace(
        &format!("  - bind: \"{extra}\"\n"),
        &format!(
            "  - bind: \"{extra}\"\n  - bind: \"{}\"\n",
            taken.local_addr().unwrap()
        ),
    );
    // Let the watcher's view of the last good file settle, then fail one reload.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let generation = proxy.generation();
    replace_by_rename(&path, &busy);
    let (code, body) = post(&proxy, "/reload").await;
    assert_eq!(code, 422);
    assert!(
        body["error"].as_str().unwrap().contains("cannot listen on"),
        "{body}"
    );
    assert_eq!(
        proxy.generation(),
        generation,
        "a failed reload changes nothing"
    );
}

#[tokio::test]
async fn backends_that_stay_keep_their_health() {
    let (a, b, c) = (
        TestBackend::spawn("a").await,
        TestBackend::spawn("b").await,
        TestBackend::spawn("c").await,
    );
    let dir = folder("health");
    let path = dir.join("lb.yaml");
    let checks = "health_check:\n  interval: 200ms\n  timeout: 200ms\n  unhealthy_threshold: 1\n  healthy_threshold: 1\n";
    std::fs::write(&path, config(&[("a", a.addr, 1), ("b", b.addr, 1)], checks)).unwrap();
    let proxy = TestProxy::spawn_file(&path).await;
    b.set_health(500);
    let down = |name: &'static str| {
        let live = proxy.live.clone();
        move || {
            let live = live.clone();
            async move {
                live.load()
                    .backends
                    .iter()
                    .any(|x| &*x.name == name && x.is_down())
            }
        }
    };
    wait_until(Duration::from_secs(10), "b to go down", down("b")).await;
    replace_by_rename(
        &path,
        &config(
            &[("a", a.addr, 1), ("b", b.addr, 1), ("c", c.addr, 1)],
            checks,
        ),
    );
    let b_before = proxy.live.load().backends[1].clone();
    assert_eq!(post(&proxy, "/reload").await.0, 200);
    let b_after = proxy.live.load().backends[1].clone();
    assert!(
        Arc::ptr_eq(&b_before, &b_after),
        "b's state (health, counters, pool) is the same value"
    );
    assert!(down("b")().await, "b kept its state across the reload");
    assert!(!down("c")().await, "a new backend starts healthy");
    b.set_health(200);
    wait_until(
        Duration::from_secs(10),
        "b's checker to keep running after the reload",
        || async { !down("b")().await },
    )
    .await;
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_fail_no_request_and_leak_nothing() {
    let (a, b, c) = (
        TestBackend::spawn("a").await,
        TestBackend::spawn("b").await,
        TestBackend::spawn("c").await,
    );
    let dir = folder("load");
    let path = dir.join("lb.yaml");
    // Health checks on, so checkers start and stop with backend c across the reloads.
    let checks = "health_check:\n  interval: 300ms\n  timeout: 300ms\n";
    std::fs::write(&path, config(&[("a", a.addr, 1), ("b", b.addr, 1)], checks)).unwrap();
    let proxy = Arc::new(TestProxy::spawn_file(&path).await);
    // Warm every keep-alive pool up at the load's concurrency, then count descriptors.
    let mut warm = Vec::new();
    for w in 0..8 {
        let proxy = proxy.clone();
        warm.push(tokio::spawn(async move {
            for i in 0..50 {
                proxy.get(&format!("/warm/{w}/{i}")).await;
            }
        }));
    }
    for w in warm {
        w.await.unwrap();
    }
    let fds_before = open_fds();
    let tasks = tokio::runtime::Handle::current().metrics();
    let tasks_before = tasks.num_alive_tasks();

    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = tokio_util::sync::CancellationToken::new();
    let limit = Instant::now() + Duration::from_secs(60);
    let mut workers = Vec::new();
    for w in 0..8 {
        let (proxy, ok, failed, stop) = (proxy.clone(), ok.clone(), failed.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            for i in 0..1_000_000 {
                if stop.is_cancelled() || Instant::now() > limit {
                    break;
                }
                let r = proxy.get(&format!("/l/{w}/{i}")).await;
                if r.status == 200 {
                    ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                    eprintln!("failed: {} {}", r.status, r.body);
                }
            }
        }));
    }
    for n in 0..50u32 {
        let third = if n % 2 == 0 {
            vec![("c", c.addr, 1 + n % 3)]
        } else {
            vec![]
        };
        let mut list = vec![("a", a.addr, 1 + n % 2), ("b", b.addr, 1)];
        list.extend(third);
        replace_by_rename(&path, &config(&list, checks));
        assert_eq!(post(&proxy, "/reload").await.0, 200, "reload {n}");
        // Traffic runs between reloads, so every reload happens under load.
        let served = ok.load(Ordering::SeqCst);
        wait_until(
            Duration::from_secs(10),
            "requests between reloads",
            || async { ok.load(Ordering::SeqCst) >= served + 5 },
        )
        .await;
    }
    stop.cancel();
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "{} ok",
        ok.load(Ordering::SeqCst)
    );
    assert!(ok.load(Ordering::SeqCst) > 200, "the load ran");
    assert!(proxy.generation() >= 51);
    // Pools may settle a few connections apart; a leak per reload would be 50 or more.
    wait_until(
        Duration::from_secs(10),
        "descriptors back to their level",
        || async { open_fds() <= fds_before + 24 },
    )
    .await;
    // Likewise tasks: a checker, watcher or listener left behind per reload would be 50.
    wait_until(
        Duration::from_secs(10),
        "tasks back to their level",
        || async { tasks.num_alive_tasks() <= tasks_before + 24 },
    )
    .await;
}

#[tokio::test]
async fn a_removed_backends_request_in_flight_finishes_and_route_follows_the_reload() {
    let (a, b) = (TestBackend::spawn("a").await, TestBackend::spawn("b").await);
    let dir = folder("inflight");
    let path = dir.join("lb.yaml");
    let by_k = "hash:\n  key: query:k\n";
    std::fs::write(&path, config(&[("a", a.addr, 1), ("b", b.addr, 1)], by_k)).unwrap();
    let proxy = Arc::new(TestProxy::spawn_file(&path).await);
    let key = (0..1000)
        .map(|i| format!("k{i}"))
        .find(|k| proxy.route(k.as_bytes())[0] == "b")
        .unwrap();
    let p = proxy.clone();
    let k = key.clone();
    let in_flight = tokio::spawn(async move { p.get(&format!("/slow?ms=1500&k={k}")).await });
    wait_until(
        Duration::from_secs(5),
        "the slow request to reach b",
        || async { b.hits() == 1 },
    )
    .await;

    replace_by_rename(&path, &config(&[("a", a.addr, 1)], by_k));
    assert_eq!(post(&proxy, "/reload").await.0, 200);
    let done = in_flight.await.unwrap();
    assert_eq!(
        (done.status.as_u16(), done.served_by.as_deref()),
        (200, Some("b")),
        "finished on b"
    );

    let admin = proxy.admin.unwrap();
    let client = client();
    let r = reply(
        client
            .get(format!("http://{admin}/route?key={key}").parse().unwrap())
            .await
            .unwrap(),
    )
    .await;
    let route: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(route["backend"], "a", "/route answers from the new ring");
    assert_eq!(
        proxy.get(&format!("/x?k={key}")).await.served_by.as_deref(),
        Some("a")
    );
}

#[tokio::test]
async fn moving_the_admin_listener_applies_the_rest_and_asks_for_a_restart() {
    let (a, b) = (TestBackend::spawn("a").await, TestBackend::spawn("b").await);
    let dir = folder("admin-move");
    let path = dir.join("lb.yaml");
    std::fs::write(&path, config(&[("a", a.addr, 1)], "")).unwrap();
    let proxy = TestProxy::spawn_file(&path).await;
    assert_eq!(
        status(&proxy).await["restart_required"],
        serde_json::json!([])
    );

    // A new admin address and a new backend in one edit: the backend is applied.
    let moved = yaml_for(
        &[("a", a.addr, 1), ("b", b.addr, 1)],
        &format!("admin:\n  bind: \"{}\"\n", dead_addr().await),
    );
    replace_by_rename(&path, &moved);
    let (code, body) = post(&proxy, "/reload").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["restart_required"], serde_json::json!(["admin.bind"]));
    let generation = body["generation"].as_u64().expect("a generation");
    // (The file watcher may reload the same file once more.)
    assert!(proxy.generation() >= generation);
    assert_eq!(proxy.live.load().backends.len(), 2);
    assert_serving_as_routed(&proxy, 30).await;
    assert!(b.hits() > 0, "the new backend serves its keys");
    // The admin listener stays where it was (this request reached it) and says so.
    let st = status(&proxy).await;
    assert_eq!(st["restart_required"], serde_json::json!(["admin.bind"]));
    assert_eq!(st["last_reload"]["result"], "ok");

    // Back to the running address: nothing waits for a restart any more.
    replace_by_rename(&path, &config(&[("a", a.addr, 1), ("b", b.addr, 1)], ""));
    let (code, body) = post(&proxy, "/reload").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["restart_required"], serde_json::json!([]));
    assert_eq!(
        status(&proxy).await["restart_required"],
        serde_json::json!([])
    );
}

#[tokio::test]
async fn a_change_of_workers_is_reported_as_needing_a_restart() {
    let a = TestBackend::spawn("a").await;
    let dir = folder("workers");
    let path = dir.join("lb.yaml");
    std::fs::write(&path, config(&[("a", a.addr, 1)], "workers: 2\n")).unwrap();
    let proxy = TestProxy::spawn_file(&path).await;
    replace_by_rename(&path, &config(&[("a", a.addr, 1)], "workers: 3\n"));
    let (code, body) = post(&proxy, "/reload").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["restart_required"], serde_json::json!(["workers"]));
    assert_eq!(
        status(&proxy).await["restart_required"],
        serde_json::json!(["workers"])
    );
}
