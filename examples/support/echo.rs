//! A tiny backend for the examples: answers every request with its name and the path,
//! and `/healthz` with `ok`. Shared by `demo.rs` and `backend.rs` through `#[path]`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Serves on `listener` as backend `name` until the process ends.
pub async fn serve(listener: TcpListener, name: Arc<str>) {
    loop {
        let (stream, _peer): (_, SocketAddr) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                eprintln!("{name}: accept failed: {e}");
                continue;
            }
        };
        let name = name.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let name = name.clone();
                async move {
                    let body = if req.uri().path() == "/healthz" {
                        "ok\n".to_owned()
                    } else {
                        format!("{name} {} {}\n", req.method(), req.uri().path())
                    };
                    let mut res = Response::new(Full::new(Bytes::from(body)));
                    if let Ok(v) = name.parse() {
                        res.headers_mut().insert("x-served-by", v);
                    }
                    Ok::<_, Infallible>(res)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
