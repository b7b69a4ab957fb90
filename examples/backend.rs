//! A standalone backend for trying ringlb by hand: answers with its name and the path,
//! and `/healthz` with `ok`.
//!
//! ```text
//! cargo run --example backend -- app-1 127.0.0.1:9001
//! ```

#[path = "support/echo.rs"]
mod echo;

use std::net::SocketAddr;
use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "app-1".to_owned());
    let addr: SocketAddr = match args
        .next()
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned())
        .parse()
    {
        Ok(a) => a,
        Err(e) => {
            eprintln!("usage: backend NAME IP:PORT ({e})");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("backend {name} listening on http://{addr}");
    echo::serve(listener, name.into()).await;
    ExitCode::SUCCESS
}
