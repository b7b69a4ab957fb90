//! WebSocket through the proxy: the Upgrade is tunnelled to the key's backend and
//! frames echo both ways.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_websocket_echoes_through_the_proxy_on_the_keys_backend() {
    let ([_a, _b, _c], proxy) = three_backends("hash:\n  key: query:room\n").await;
    for room in ["lobby", "kitchen", "attic", "cellar"] {
        let owner = proxy.route(room.as_bytes())[0].clone();
        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        let url = format!("ws://{}/ws?room={room}", proxy.addr);
        let (mut ws, res) = tokio_tungstenite::client_async(url, stream)
            .await
            .expect("websocket handshake through the proxy");
        assert_eq!(res.status(), 101);
        assert_eq!(res.headers()["x-backend"], owner.as_str());
        for i in 0..20 {
            ws.send(Message::Text(format!("hello {i}"))).await.unwrap();
            let reply = ws.next().await.expect("an echo").expect("a frame");
            assert_eq!(reply, Message::Text(format!("{owner}: hello {i}")));
        }
        let big = vec![7u8; 1 << 20];
        ws.send(Message::Binary(big.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::Binary(big));
        ws.close(None).await.unwrap();
    }
    // Plain requests on the same proxy keep working around the tunnels.
    assert_eq!(proxy.get("/after").await.status, 200);
}

#[tokio::test]
async fn an_open_tunnel_keeps_its_connection_slot() {
    let (_a, proxy) = one_backend("limits:\n  max_connections: 1\n").await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", proxy.addr), stream)
        .await
        .unwrap();
    ws.send(Message::Text("hi".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("a: hi".into())
    );

    let url = proxy.url("/other");
    let other = tokio::spawn(async move {
        let client = client();
        client.get(url.parse().unwrap()).await.unwrap().status()
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !other.is_finished(),
        "a second connection was served while the tunnel held the only slot"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), other)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_open_tunnel_counts_in_flight_until_it_closes_and_tunnels_are_bounded() {
    // Bounded loads count a tunnel as a request in flight for its whole life, so a
    // flood of sockets on one key spills like a flood of requests.
    let ([_a, _b, _c], proxy) =
        three_backends("hash:\n  key: query:room\n  balance_factor: 1.25\n").await;
    let owner = proxy.route(b"hot")[0].clone();
    let in_flight = |name: &str| {
        let snap = proxy.live.load();
        snap.backends
            .iter()
            .find(|b| *b.name == *name)
            .map_or(0, |b| b.in_flight())
    };
    let mut sockets = Vec::new();
    let mut served = std::collections::HashMap::<String, usize>::new();
    for _ in 0..12 {
        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        let url = format!("ws://{}/ws?room=hot", proxy.addr);
        let (ws, res) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        let by = res.headers()["x-backend"].to_str().unwrap().to_owned();
        *served.entry(by).or_default() += 1;
        sockets.push(ws);
    }
    assert!(served.len() >= 2, "tunnels spilled: {served:?}");
    let open = served[&owner];
    wait_until(
        std::time::Duration::from_secs(5),
        "the owner's tunnels to count",
        || {
            let n = in_flight(&owner);
            async move { n == open as u64 }
        },
    )
    .await;
    for mut ws in sockets {
        ws.close(None).await.unwrap();
    }
    wait_until(
        std::time::Duration::from_secs(5),
        "closed tunnels to stop counting",
        || {
            let n = in_flight(&owner);
            async move { n == 0 }
        },
    )
    .await;
}
