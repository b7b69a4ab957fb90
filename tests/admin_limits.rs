//! The admin listener under a flood: its own cap (`limits.max_admin_connections`,
//! following reloads) and its own time limit (`timeouts.client_header`), so a flood of
//! the admin port neither starves traffic nor locks ops out for longer than that limit.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any one step may take before the test fails: generous, never a speed claim.
const PATIENCE: Duration = Duration::from_secs(10);

fn admin_config(a: SocketAddr, extra: &str) -> String {
    yaml_for(
        &[("a", a, 1)],
        &format!("admin:\n  bind: \"127.0.0.1:0\"\n{extra}"),
    )
}

/// Sends one keep-alive `GET path` on `s` and returns the status, leaving `s` open.
async fn get_on(s: &mut TcpStream, path: &str) -> Option<u16> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = Vec::new();
    // The head and a small body arrive together; read until the blank line and the body.
    loop {
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                return raw_status(&text);
            }
        }
    }
}

/// Reads until the peer closes: true when it closed (EOF or reset) within `PATIENCE`.
async fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, read_all).await.is_ok()
}

#[tokio::test]
async fn silent_partial_and_idle_admin_connections_are_closed_so_ops_get_back_in() {
    let a = TestBackend::spawn("a").await;
    let cap = 4;
    let proxy = TestProxy::spawn(&admin_config(
        a.addr,
        &format!("timeouts:\n  client_header: 300ms\nlimits:\n  max_admin_connections: {cap}\n"),
    ))
    .await;
    let admin = proxy.admin.expect("admin listener");

    // Three times the cap: connections that never send a byte...
    let mut flood = Vec::new();
    for _ in 0..3 * cap {
        flood.push(TcpStream::connect(admin).await.expect("connect to admin"));
    }
    // ...one that sends half a head and stops...
    let mut partial = TcpStream::connect(admin).await.expect("connect to admin");
    partial
        .write_all(b"GET /status HTTP/1.1\r\nHost: ad")
        .await
        .expect("write a partial head");
    flood.push(partial);

    // (a) Traffic listeners do not share the admin cap: requests are answered while
    // the flood holds every admin slot.
    for i in 0..5 {
        let r = proxy.get(&format!("/during-flood/{i}")).await;
        assert_eq!(
            (r.status.as_u16(), r.served_by.as_deref()),
            (200, Some("a"))
        );
    }

    // (c) Each flood connection is closed by the admin listener's own clock.
    for (i, s) in flood.iter_mut().enumerate() {
        assert!(
            closed_by_peer(s).await,
            "admin connection {i} was not closed within {PATIENCE:?}"
        );
    }

    // One that asks once, then idles, is closed too.
    let mut idle = TcpStream::connect(admin).await.expect("connect to admin");
    assert_eq!(get_on(&mut idle, "/healthz").await, Some(200));
    assert!(
        closed_by_peer(&mut idle).await,
        "an idle admin connection stays open"
    );

    // Ops are back in.
    let status = tokio::time::timeout(PATIENCE, async {
        let mut s = TcpStream::connect(admin).await.expect("connect to admin");
        get_on(&mut s, "/status").await
    })
    .await
    .expect("/status answered once the flood timed out");
    assert_eq!(status, Some(200));
}

#[tokio::test]
async fn connections_past_the_admin_cap_wait_for_a_free_slot() {
    let a = TestBackend::spawn("a").await;
    let cap = 3;
    // A long client_header: the held connections stay open for the whole test.
    let proxy = TestProxy::spawn(&admin_config(
        a.addr,
        &format!("timeouts:\n  client_header: 60s\nlimits:\n  max_admin_connections: {cap}\n"),
    ))
    .await;
    let admin = proxy.admin.expect("admin listener");

    let mut held = Vec::new();
    for _ in 0..cap {
        let mut s = TcpStream::connect(admin).await.expect("connect to admin");
        assert_eq!(get_on(&mut s, "/healthz").await, Some(200));
        held.push(s);
    }
    // (b) One past the cap connects (the kernel's backlog takes it) but is not served.
    let mut waiting = TcpStream::connect(admin).await.expect("connect to admin");
    let early =
        tokio::time::timeout(Duration::from_millis(500), get_on(&mut waiting, "/ready")).await;
    assert!(early.is_err(), "served past the cap: {early:?}");
    // Traffic goes on meanwhile.
    assert_eq!(proxy.get("/k").await.status, 200);

    // A slot frees: the waiting connection is served.
    drop(held.pop());
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, waiting.read(&mut buf))
        .await
        .expect("served once a slot freed")
        .expect("read the answer");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert_eq!(raw_status(&text), Some(200), "{text}");
}

#[tokio::test]
async fn the_admin_cap_follows_a_reload() {
    let a = TestBackend::spawn("a").await;
    let dir = std::env::temp_dir().join(format!("ringlb-admin-limits-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    let path = dir.join("lb.yaml");
    let with_cap = |cap: usize| {
        admin_config(
            a.addr,
            &format!("timeouts:\n  client_header: 60s\nlimits:\n  max_admin_connections: {cap}\n"),
        )
    };
    std::fs::write(&path, with_cap(1)).expect("write the config");
    let proxy = TestProxy::spawn_file(&path).await;
    let admin = proxy.admin.expect("admin listener");

    let mut held = TcpStream::connect(admin).await.expect("connect to admin");
    assert_eq!(get_on(&mut held, "/healthz").await, Some(200));
    let mut waiting = TcpStream::connect(admin).await.expect("connect to admin");
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await
        .expect("write a request");
    let mut buf = vec![0u8; 4096];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut buf))
            .await
            .is_err(),
        "served past a cap of 1"
    );

    // The file watcher reloads; the raised cap lets the waiting connection in while
    // the first one stays open.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, with_cap(2)).expect("write the new config");
    std::fs::rename(&tmp, &path).expect("replace the config");
    let n = tokio::time::timeout(PATIENCE, waiting.read(&mut buf))
        .await
        .expect("served after the cap was raised by a reload")
        .expect("read the answer");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert_eq!(raw_status(&text), Some(200), "{text}");
    assert_eq!(proxy.generation(), 2);
    assert_eq!(
        get_on(&mut held, "/healthz").await,
        Some(200),
        "the held connection still works"
    );
}

#[tokio::test]
async fn a_head_whose_body_never_comes_is_closed() {
    let a = TestBackend::spawn("a").await;
    let proxy = TestProxy::spawn(&admin_config(
        a.addr,
        "timeouts:\n  client_header: 300ms\nlimits:\n  max_admin_connections: 1\n",
    ))
    .await;
    let admin = proxy.admin.expect("admin listener");
    let mut s = TcpStream::connect(admin).await.expect("connect to admin");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .expect("write a head and part of its body");
    assert!(
        closed_by_peer(&mut s).await,
        "a stalled body holds the only admin slot"
    );
    let mut next = TcpStream::connect(admin).await.expect("connect to admin");
    assert_eq!(get_on(&mut next, "/healthz").await, Some(200));
}
