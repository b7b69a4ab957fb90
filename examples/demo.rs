//! The two-minute tour: starts three backends on the addresses in `lb.yaml`, the real
//! proxy from `lb.yaml`, sends a few requests and shows which backend answered each
//! path (twice, to show a path always lands on the same backend), then keeps serving
//! until Ctrl-C so you can `curl` it.
//!
//! ```text
//! cargo run --release --example demo
//! ```

#[path = "support/echo.rs"]
mod echo;

use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ringlb::snapshot::{Live, Snapshot};
use tokio_util::sync::CancellationToken;

const PATHS: [&str; 8] = [
    "/",
    "/users/1",
    "/users/2",
    "/cart/42",
    "/img/cat.png",
    "/api/v1/items",
    "/k/7",
    "/k/8",
];

#[tokio::main]
async fn main() -> ExitCode {
    match demo().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lb.yaml");
    let config = ringlb::config::load(&path)?;

    for b in &config.backends {
        let Some(addr) = b.address.ip() else {
            return Err(format!(
                "demo backends need IP addresses, {} has {}",
                b.name, b.address
            )
            .into());
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot start backend {} on {addr}: {e}", b.name))?;
        tokio::spawn(echo::serve(listener, b.name.clone()));
    }
    let bound = ringlb::server::bind(&config).await?;
    let proxy = bound.proxy[0].local_addr()?;
    let admin = bound.admin.as_ref().map(|a| a.local_addr()).transpose()?;
    let live = Arc::new(Live::from_pointee(Snapshot::build(config, None)?));
    let stop = CancellationToken::new();
    ringlb::shutdown::on_signal(stop.clone());
    let server = tokio::spawn(ringlb::server::serve(bound, live.clone(), stop.clone()));

    println!(
        "ringlb is proxying http://{proxy} to {} backends ({})\n",
        live.load().backends.len(),
        path.display()
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    println!(
        "{:<16} {:<10} {:<10} {:<10}",
        "path", "1st", "2nd", "ringlb route"
    );
    for p in PATHS {
        let mut answers = Vec::new();
        for _ in 0..2 {
            let res = client.get(format!("http://{proxy}{p}").parse()?).await?;
            let body = res.into_body().collect().await?.to_bytes();
            let text = String::from_utf8_lossy(&body);
            answers.push(text.split_whitespace().next().unwrap_or("?").to_owned());
        }
        let snap = live.load();
        let routed = snap
            .placement
            .owner(ringlb::ring::hash_key(p.as_bytes()))
            .map_or("none", |id| &*snap.backend(id).name)
            .to_owned();
        println!(
            "{:<16} {:<10} {:<10} {:<10}",
            p, answers[0], answers[1], routed
        );
    }
    println!("\nTry it: curl -i http://{proxy}/users/1   (Ctrl-C to stop)");
    if let Some(admin) = admin {
        println!("        curl http://{admin}/status   curl 'http://{admin}/route?key=/users/1'   curl http://{admin}/metrics");
    }
    stop.cancelled().await;
    server.await?;
    Ok(())
}
