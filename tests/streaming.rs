//! Bodies stream both ways: 64 MiB each way arrives intact, and the first bytes cross
//! the proxy before the last ones exist, which a proxy that buffers whole cannot do.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const MIB_64: u64 = 64 * 1024 * 1024;
const CHUNK: u64 = 256 * 1024;

#[tokio::test]
async fn a_64_mib_upload_arrives_intact() {
    let (_a, proxy) = one_backend("").await;
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        let mut at = 0;
        while at < MIB_64 {
            let chunk: Vec<u8> = (at..at + CHUNK).map(pattern).collect();
            if tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.is_err() {
                return;
            }
            at += CHUNK;
        }
    });
    let client = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(proxy.url("/upload")).body(body).unwrap();
    let res = client.request(req).await.expect("upload through the proxy");
    let reply = reply(res).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, format!("received {MIB_64} intact true"));
}

#[tokio::test]
async fn a_64_mib_download_arrives_intact() {
    let (_a, proxy) = one_backend("").await;
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
    let res = client
        .get(
            proxy
                .url(&format!("/download?bytes={MIB_64}"))
                .parse()
                .unwrap(),
        )
        .await
        .expect("download through the proxy");
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let data = frame.expect("body frame").into_data().unwrap_or_default();
        for b in data.iter() {
            assert_eq!(*b, pattern(n), "byte {n}");
            n += 1;
        }
    }
    assert_eq!(n, MIB_64);
}

#[tokio::test]
async fn the_request_body_is_forwarded_before_it_ends() {
    let (_a, proxy) = one_backend("").await;
    let (tx, body) = channel_body();
    tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
        .await
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(proxy.url("/first-chunk")).body(body).unwrap();
    // The backend answers on the first chunk; the rest is not even written yet.
    let res = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .expect("the backend answered before the body ended: it must have been streamed")
        .expect("request through the proxy");
    assert_eq!(res.status(), 200);
    tx.send(Ok(Frame::data(Bytes::from_static(b"rest"))))
        .await
        .unwrap();
    drop(tx);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"first chunk true");
}

#[tokio::test]
async fn the_response_body_is_forwarded_before_it_ends() {
    let (a, proxy) = one_backend("").await;
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
    let res = client
        .get(proxy.url("/drip").parse().unwrap())
        .await
        .expect("drip through the proxy");
    let mut body = res.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first chunk arrives while the backend holds the rest")
        .expect("a frame")
        .expect("no error");
    assert_eq!(first.into_data().unwrap(), "first\n");
    a.release();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"rest\n");
}

#[tokio::test]
async fn an_h2_upload_streams_to_an_http1_backend() {
    let (_a, proxy) = one_backend("").await;
    let (tx, body) = channel_body();
    let total = 8 * CHUNK;
    tokio::spawn(async move {
        let mut at = 0;
        while at < total {
            let chunk: Vec<u8> = (at..at + CHUNK).map(pattern).collect();
            let _ = tx.send(Ok(Frame::data(Bytes::from(chunk)))).await;
            at += CHUNK;
        }
    });
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = Request::post(proxy.url("/upload")).body(body).unwrap();
    let reply = reply(client.request(req).await.expect("h2c upload")).await;
    assert_eq!(reply.body, format!("received {total} intact true"));
}
