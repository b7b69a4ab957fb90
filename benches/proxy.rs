//! What does a request through ringlb cost end to end, and what does observability add?
//! The real `ringlb` binary (one worker) in front of three in-process backends, driven
//! by a keep-alive HTTP/1.1 client over many distinct paths at 64 and 1 connections;
//! in the same run: the client straight to a backend, ringlb with `access_log: false`,
//! and ringlb with `access_log: true` (stdout to /dev/null). Prints req/s, p50/p99
//! latency and the proxy's CPU time per request (from /proc). Rounds are interleaved.
//!
//! `cargo bench --bench proxy` (about two minutes); `RINGLB_BENCH_SECS` sets the
//! seconds per case (default 4).

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Distinct paths the client cycles through, so the proxy spreads them over backends.
const PATHS: u64 = 100_000;
const ROUNDS: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Direct,
    LogOff,
    LogOn,
}

impl Target {
    fn label(self) -> &'static str {
        match self {
            Target::Direct => "direct to a backend",
            Target::LogOff => "ringlb, access_log off",
            Target::LogOn => "ringlb, access_log on",
        }
    }
}

struct Outcome {
    requests: u64,
    errors: u64,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
    cpu_us_per_request: Option<f64>,
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would run us with no such flag.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs: u64 = std::env::var("RINGLB_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime for the bench");
    runtime.block_on(bench(Duration::from_secs(secs)));
}

async fn bench(per_case: Duration) {
    let mut backends = Vec::new();
    for name in ["app-1", "app-2", "app-3"] {
        backends.push(spawn_backend(name).await);
    }
    let mut proxies = Vec::new();
    for log in [false, true] {
        proxies.push(Proxy::start(&backends, log, None));
    }
    println!("ringlb end-to-end bench: {per_case:?} per case, {ROUNDS} interleaved rounds, {PATHS} distinct paths\n");
    println!("| connections | target | req/s | p50 | p99 | proxy CPU per request | errors |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for connections in [64usize, 1] {
        for round in 0..ROUNDS {
            for target in [Target::Direct, Target::LogOff, Target::LogOn] {
                let (addr, pid) = match target {
                    Target::Direct => (backends[0], None),
                    Target::LogOff => (proxies[0].addr, Some(proxies[0].child.id())),
                    Target::LogOn => (proxies[1].addr, Some(proxies[1].child.id())),
                };
                let o = load(addr, pid, connections, per_case).await;
                println!(
                    "| {connections} | {} (round {}) | {:.0} | {} µs | {} µs | {} | {} |",
                    target.label(),
                    round + 1,
                    o.requests as f64 / o.secs,
                    o.p50_us,
                    o.p99_us,
                    o.cpu_us_per_request
                        .map_or("-".to_owned(), |c| format!("{c:.1} µs")),
                    o.errors
                );
            }
        }
    }
    tls_cases(&backends, &proxies[0], per_case).await;
    for mut p in proxies {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
}

async fn spawn_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a bench backend");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(move |_req| async move {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        name.as_bytes(),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

struct Proxy {
    child: Child,
    addr: SocketAddr,
}

impl Proxy {
    fn start(
        backends: &[SocketAddr],
        access_log: bool,
        tls: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Proxy {
        let dir = std::env::temp_dir().join(format!(
            "ringlb-bench-{}-{access_log}-{}",
            std::process::id(),
            tls.is_some()
        ));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let listener = match tls {
            None => String::new(),
            Some((c, k)) => format!(
                "    tls:\n      certificates:\n        - cert: \"{}\"\n          key: \"{}\"\n",
                c.display(),
                k.display()
            ),
        };
        let mut yaml = format!(
            "listeners:\n  - bind: \"127.0.0.1:0\"\n{listener}workers: 1\naccess_log: {access_log}\nbackends:\n"
        );
        for (i, b) in backends.iter().enumerate() {
            yaml.push_str(&format!("  - name: app-{}\n    address: \"{b}\"\n", i + 1));
        }
        let path = dir.join("lb.yaml");
        std::fs::write(&path, yaml).expect("write the bench config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringlb"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ringlb");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("ringlb exited before listening")
                .expect("read stderr");
            if let (true, Some(at)) = (line.contains("listening"), line.find("127.0.0.1:")) {
                let rest = &line[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                    .unwrap_or(rest.len());
                break rest[..end]
                    .parse()
                    .expect("an address in the listening line");
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Proxy { child, addr }
    }
}

/// CPU time (user + system) of a process so far, from /proc.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks()))
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

async fn load(
    addr: SocketAddr,
    pid: Option<u32>,
    connections: usize,
    per_case: Duration,
) -> Outcome {
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections)
        .build_http::<Empty<Bytes>>();
    // Warm the connections up so the case measures steady keep-alive traffic.
    let warm_until = Instant::now() + Duration::from_millis(300);
    run_clients(&client, addr, connections, warm_until, 0).await;

    let cpu_before = pid.and_then(cpu_time);
    let started = Instant::now();
    let until = started + per_case;
    let results = run_clients(&client, addr, connections, until, 1).await;
    let secs = started.elapsed().as_secs_f64();
    let cpu_after = pid.and_then(cpu_time);

    let (latencies, errors) = merge(results);
    let pick = |q: f64| percentile(&latencies, q);
    let requests = latencies.len() as u64;
    Outcome {
        requests,
        errors,
        secs,
        p50_us: u64::from(pick(0.50)),
        p99_us: u64::from(pick(0.99)),
        cpu_us_per_request: match (cpu_before, cpu_after) {
            (Some(b), Some(a)) if requests > 0 => {
                Some((a - b).as_secs_f64() * 1e6 / requests as f64)
            }
            _ => None,
        },
    }
}

/// `connections` clients, each one request at a time, until `until`; each returns its
/// latencies in microseconds and its error count.
async fn run_clients(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    connections: usize,
    until: Instant,
    seed: u64,
) -> Vec<(Vec<u32>, u64)> {
    let mut tasks = Vec::with_capacity(connections);
    for c in 0..connections {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(200_000);
            let mut errors = 0u64;
            let mut n = (c as u64).wrapping_mul(7919).wrapping_add(seed * 104_729);
            while Instant::now() < until {
                n = n.wrapping_add(1);
                let uri = format!("http://{addr}/k/{}", n.wrapping_mul(2_654_435_761) % PATHS);
                let t = Instant::now();
                let ok = match client.get(uri.parse().expect("a valid bench URI")).await {
                    Ok(res) => res.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    latencies.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut out = Vec::with_capacity(connections);
    for t in tasks {
        out.push(t.await.unwrap_or_default());
    }
    out
}

/// TLS next to plain HTTP, through the same proxy build: keep-alive requests/s over
/// TLS, and handshakes/s (a new connection for every request), each measured at 64
/// connections alongside the same client over plain TCP.
async fn tls_cases(backends: &[SocketAddr], plain: &Proxy, per_case: Duration) {
    let dir = std::env::temp_dir().join(format!("ringlb-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = rcgen::CertificateParams::new(vec!["bench.test".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("a certificate");
    let (c, k) = (dir.join("bench.pem"), dir.join("bench.key"));
    std::fs::write(&c, cert.pem()).expect("write cert");
    std::fs::write(&k, key.serialize_pem()).expect("write key");
    let mut tls_proxy = Proxy::start(backends, false, Some((&c, &k)));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("a root");
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = Arc::new(client);

    println!("\n| connections | target | req/s | p50 | p99 | proxy CPU per request | errors |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for round in 0..ROUNDS {
        for (label, target, use_tls, reconnect) in [
            ("plain, keep-alive", plain, false, false),
            ("TLS, keep-alive", &tls_proxy, true, false),
            ("plain, new connection per request", plain, false, true),
            ("TLS, new handshake per request", &tls_proxy, true, true),
        ] {
            let cpu_before = cpu_time(target.child.id());
            let started = Instant::now();
            let tls = use_tls.then(|| tls.clone());
            let results = conn_clients(target.addr, tls, 64, started + per_case, reconnect).await;
            let secs = started.elapsed().as_secs_f64();
            let cpu_after = cpu_time(target.child.id());
            let (latencies, errors) = merge(results);
            let pick = |q: f64| percentile(&latencies, q);
            let n = latencies.len() as f64;
            let cpu = match (cpu_before, cpu_after) {
                (Some(b), Some(a)) if n > 0.0 => {
                    format!("{:.1} µs", (a - b).as_secs_f64() * 1e6 / n)
                }
                _ => "-".to_owned(),
            };
            println!(
                "| 64 | {label} (round {}) | {:.0} | {} µs | {} µs | {cpu} | {errors} |",
                round + 1,
                n / secs,
                pick(0.5),
                pick(0.99)
            );
        }
    }
    let _ = tls_proxy.child.kill();
    let _ = tls_proxy.child.wait();
}

/// `connections` clients on their own HTTP/1.1 connections (TLS when `tls` is set),
/// one request at a time until `until`; with `reconnect`, a new connection per request.
async fn conn_clients(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    connections: usize,
    until: Instant,
    reconnect: bool,
) -> Vec<(Vec<u32>, u64)> {
    let mut tasks = Vec::with_capacity(connections);
    for c in 0..connections {
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            let mut errors = 0u64;
            let mut sender = None;
            let mut n = c as u64 * 7919;
            while Instant::now() < until {
                n = n.wrapping_add(1);
                let t = Instant::now();
                if sender.is_none() || reconnect {
                    sender = open(addr, tls.clone()).await;
                }
                let Some(s) = sender.as_mut() else {
                    errors += 1;
                    continue;
                };
                let req =
                    hyper::Request::get(format!("/k/{}", n.wrapping_mul(2_654_435_761) % PATHS))
                        .header("host", "bench.test")
                        .body(Empty::<Bytes>::new())
                        .expect("a valid request");
                let ok = match s.send_request(req).await {
                    Ok(res) => res.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    latencies.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                } else {
                    errors += 1;
                    sender = None;
                }
            }
            (latencies, errors)
        }));
    }
    let mut out = Vec::with_capacity(connections);
    for t in tasks {
        out.push(t.await.unwrap_or_default());
    }
    out
}

async fn open(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let sender = match tls {
        None => {
            let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .ok()?;
            tokio::spawn(conn);
            s
        }
        Some(config) => {
            let name = rustls_pki_types::ServerName::try_from("bench.test").ok()?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .ok()?;
            let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .ok()?;
            tokio::spawn(conn);
            s
        }
    };
    Some(sender)
}

/// All clients' latencies, sorted, and their errors.
fn merge(results: Vec<(Vec<u32>, u64)>) -> (Vec<u32>, u64) {
    let mut latencies: Vec<u32> = Vec::new();
    let mut errors = 0;
    for (l, e) in results {
        latencies.extend(l);
        errors += e;
    }
    latencies.sort_unstable();
    (latencies, errors)
}

/// The `q` quantile of sorted latencies (0 when there are none).
fn percentile(sorted: &[u32], q: f64) -> u32 {
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or(0)
}
