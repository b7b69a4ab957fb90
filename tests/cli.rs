//! The `ringlb` binary as ops use it: check, route, ring, run, SIGTERM, bind failure.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;

fn ringlb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("run the ringlb binary")
}

/// A config file in a fresh temporary folder.
fn write_config(name: &str, yaml: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringlb-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    let path = dir.join("lb.yaml");
    std::fs::write(&path, yaml).expect("write the config");
    path
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const THREE: &str = "listeners:\n  - bind: \"127.0.0.1:0\"\nbackends:\n  - name: app-1\n    address: \"127.0.0.1:9001\"\n  - name: app-2\n    address: \"127.0.0.1:9002\"\n  - name: app-3\n    address: \"127.0.0.1:9003\"\n    weight: 2\n";

#[test]
fn check_prints_a_summary_and_exits_0() {
    let path = write_config("check-ok", THREE);
    let out = ringlb(&["check", "--config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!(
            "{}: valid\nlisteners: 127.0.0.1:0\n",
            path.display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("hash: key path, 160 vnodes, 640 points, ring fingerprint "),
        "{stdout}"
    );
    assert!(
        stdout.contains("app-3  127.0.0.1:9003         weight    2  share "),
        "{stdout}"
    );
}

#[test]
fn check_prints_the_error_with_its_position_and_exits_1() {
    let path = write_config("check-bad", &THREE.replace("weight: 2", "weight: two"));
    let out = ringlb(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim_end(),
        format!("{}:10:13: backends[2].weight: invalid type: string \"two\", expected an integer 0..=1000", path.display())
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn the_config_path_comes_from_ringlb_config_when_no_flag_is_given() {
    let path = write_config("env", THREE);
    let out = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .arg("check")
        .env("RINGLB_CONFIG", &path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn route_prints_owner_and_failover_order_as_the_ring_has_them() {
    let path = write_config("route", THREE);
    let out = ringlb(&[
        "route",
        "--config",
        path.to_str().unwrap(),
        "/a",
        "/users/42",
    ]);
    assert!(out.status.success());
    let config = ringlb::config::load(&path).unwrap();
    let snap = ringlb::snapshot::Snapshot::build(config, None).unwrap();
    let expected: String = ["/a", "/users/42"]
        .iter()
        .map(|k| {
            let order: Vec<&str> = snap
                .placement
                .failover(ringlb::ring::hash_key(k.as_bytes()))
                .map(|id| &*snap.backend(id).name)
                .collect();
            let addr = &snap
                .backends
                .iter()
                .find(|b| &*b.name == order[0])
                .unwrap()
                .address;
            format!(
                "{k} -> {} ({addr}); failover: {}\n",
                order[0],
                order.join(", ")
            )
        })
        .collect();
    assert_eq!(text(&out.stdout), expected);
}

#[test]
fn ring_prints_shares_against_ideal() {
    let path = write_config("ring", THREE);
    let out = ringlb(&["ring", "--config", path.to_str().unwrap()]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        "backend  weight   points     share     ideal   ratio"
    );
    assert!(
        lines[3].starts_with("app-3         2      320  "),
        "{stdout}"
    );
    assert!(
        lines[3].contains("50.00%"),
        "ideal share of weight 2 in 4: {stdout}"
    );
    assert!(lines[4].starts_with("max/mean load: "), "{stdout}");
}

/// Starts `ringlb --config path` and waits for its "listening" log line.
fn start(path: &std::path::Path, extra: &[&str]) -> (Child, SocketAddr) {
    start_with(path, extra, Stdio::null(), "info")
}

/// Like `start`, with the child's stdout (the access log) going to `stdout`.
fn start_with(
    path: &std::path::Path,
    extra: &[&str],
    stdout: Stdio,
    rust_log: &str,
) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["--config", path.to_str().unwrap()])
        .args(extra)
        .env("RUST_LOG", rust_log)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringlb");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("ringlb exited before listening")
            .unwrap();
        if let Some(at) = line.find("127.0.0.1:") {
            if line.contains("listening") {
                let rest = &line[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                    .unwrap_or(rest.len());
                break rest[..end]
                    .parse()
                    .expect("an address in the listening line");
            }
        }
    };
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// SIGTERM: the request in flight still gets its answer `body`, then ringlb exits 0.
async fn sigterm_drains(mut child: Child, in_flight: tokio::task::JoinHandle<Reply>, body: &str) {
    signal(&child, "-TERM");
    let done = in_flight.await.unwrap();
    assert_eq!((done.status.as_u16(), done.body.as_str()), (200, body));
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test]
async fn sigterm_drains_the_request_in_flight_and_exits_0() {
    let a = TestBackend::spawn("a").await;
    let path = write_config("run", &yaml_with(&[&a]));
    let (child, addr) = start(&path, &["--log-format", "json"]);
    let url = format!("http://{addr}/slow?ms=1500");
    let in_flight = spawn_get(url);
    wait_until(
        Duration::from_secs(5),
        "the request to reach the backend",
        || async { a.hits() == 1 },
    )
    .await;
    sigterm_drains(child, in_flight, "a").await;
}

#[tokio::test]
async fn a_taken_port_is_a_clear_error_and_a_nonzero_exit() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let yaml = THREE.replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let path = write_config("taken", &yaml);
    let out = ringlb(&["--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "ringlb: cannot listen on 127.0.0.1:{port}: Address already in use"
        )),
        "{stderr}"
    );
}

#[test]
fn a_missing_config_file_is_an_error() {
    let out = ringlb(&["check", "--config", "/nonexistent/lb.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).starts_with("/nonexistent/lb.yaml: cannot read the config: "));
}

#[test]
fn route_reads_keys_as_the_configured_source_yields_them() {
    let path = write_config("route-ip", &format!("{THREE}hash:\n  key: client_ip\n"));
    let out = ringlb(&["route", "--config", path.to_str().unwrap(), "10.1.2.3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config = ringlb::config::load(&path).unwrap();
    let snap = ringlb::snapshot::Snapshot::build(config, None).unwrap();
    let owner = snap
        .placement
        .owner(ringlb::ring::hash_key(&[10, 1, 2, 3]))
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!("10.1.2.3 -> {} (", snap.backend(owner).name)),
        "{stdout}"
    );
}

#[tokio::test]
async fn the_access_log_writes_one_json_line_per_request_to_stdout_unless_off() {
    let a = TestBackend::spawn("a").await;
    for (name, extra, expected) in [
        ("access-on", "", 2),
        ("access-off", "access_log: false\n", 0),
    ] {
        let path = write_config(name, &format!("{}{extra}", yaml_with(&[&a])));
        // RUST_LOG picks diagnostics only: at warn (but for the listening line) the
        // access log is still written.
        let (mut child, addr) = start_with(
            &path,
            &["--log-format", "json"],
            Stdio::piped(),
            "warn,ringlb::server=info",
        );
        let client = client();
        for target in ["/al/1", "/al/2?x=1"] {
            let r = reply(
                client
                    .get(format!("http://{addr}{target}").parse().unwrap())
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(r.status, 200);
        }
        drop(client);
        signal(&child, "-TERM");
        let mut stdout = child.stdout.take().unwrap();
        let out = tokio::task::spawn_blocking(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
            let status = child.wait().unwrap();
            (s, status)
        })
        .await
        .unwrap();
        assert_eq!(out.1.code(), Some(0));
        let lines: Vec<serde_json::Value> = out
            .0
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), expected, "{name}: {}", out.0);
        for (line, target) in lines.iter().zip(["/al/1", "/al/2?x=1"]) {
            assert_eq!(line["target"], "ringlb::access");
            let f = &line["fields"];
            assert_eq!(f["method"], "GET");
            assert_eq!(f["path"], target);
            assert_eq!(f["status"], 200);
            assert_eq!(f["backend"], "a");
            assert_eq!(f["attempts"], 1);
            assert_eq!(f["bytes_in"], 0);
            assert_eq!(f["bytes_out"], 1, "the body \"a\"");
            assert!(f["client"].as_str().unwrap().starts_with("127.0.0.1:"));
            assert!(f["duration_ms"].as_f64().unwrap() >= 0.0);
            assert!(line["timestamp"].is_string());
        }
    }
}

#[tokio::test]
async fn sighup_reloads_even_an_unchanged_file() {
    let a = TestBackend::spawn("a").await;
    let admin = dead_addr().await;
    let path = write_config(
        "sighup",
        &yaml_for(
            &[("a", a.addr, 1)],
            &format!("admin:\n  bind: \"{admin}\"\n"),
        ),
    );
    let (mut child, _) = start(&path, &[]);
    let client = client();
    let generation = || {
        let client = client.clone();
        async move {
            let r = reply(
                client
                    .get(format!("http://{admin}/status").parse().unwrap())
                    .await
                    .unwrap(),
            )
            .await;
            serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["generation"]
                .as_u64()
                .unwrap()
        }
    };
    assert_eq!(generation().await, 1);
    // The file is unchanged, which the watcher ignores: only SIGHUP can reload it.
    signal(&child, "-HUP");
    wait_until(Duration::from_secs(10), "SIGHUP to reload", || async {
        generation().await == 2
    })
    .await;
    signal(&child, "-HUP");
    wait_until(
        Duration::from_secs(10),
        "a second SIGHUP to reload",
        || async { generation().await == 3 },
    )
    .await;
    signal(&child, "-TERM");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn diff_reports_the_exact_share_of_keys_a_change_moves() {
    let old = write_config("diff-old", THREE);
    let new = write_config(
        "diff-new",
        &THREE.replace(
            "  - name: app-2\n    address: \"127.0.0.1:9002\"\n",
            "  - name: app-4\n    address: \"127.0.0.1:9004\"\n",
        ),
    );
    let out = ringlb(&["diff", old.to_str().unwrap(), new.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let build = |p: &std::path::Path| {
        ringlb::snapshot::Snapshot::build(ringlb::config::load(p).unwrap(), None).unwrap()
    };
    let d = ringlb::diff::diff(&build(&old), &build(&new));
    assert!(
        stdout.starts_with(&format!(
            "+app-4 -app-2, {:.1}% of keys moved\n",
            d.moved * 100.0
        )),
        "{stdout}"
    );
    assert!(stdout.contains("app-2 -> app-4"), "{stdout}");
    assert!(stdout.contains("shares after the change:"), "{stdout}");
    let bad = ringlb(&["diff", old.to_str().unwrap(), "/nonexistent.yaml"]);
    assert_eq!(bad.status.code(), Some(1));
}

/// The benchmarks' setting, `workers: 1`: one runtime thread must still serve HTTP/1.1
/// and h2c, reload on SIGHUP (a blocking-pool build) and drain on SIGTERM.
#[tokio::test]
async fn one_worker_serves_both_protocols_reloads_and_drains() {
    let a = TestBackend::spawn("a").await;
    let b = TestBackend::spawn("b").await;
    let extra = "workers: 1\n";
    let path = write_config("one-worker", &yaml_for(&[("a", a.addr, 1)], extra));
    let (child, addr) = start(&path, &[]);
    let h1 = client();
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    for i in 0..20 {
        let url: hyper::Uri = format!("http://{addr}/k/{i}").parse().unwrap();
        let r1 = reply(h1.get(url.clone()).await.unwrap()).await;
        let r2 = reply(h2.get(url).await.unwrap()).await;
        assert_eq!((r1.status.as_u16(), r1.body.as_str()), (200, "a"));
        assert_eq!((r2.status.as_u16(), r2.body.as_str()), (200, "a"));
    }
    std::fs::write(&path, yaml_for(&[("b", b.addr, 1)], extra)).unwrap();
    signal(&child, "-HUP");
    wait_until(Duration::from_secs(10), "the reload to reach b", || async {
        let url = format!("http://{addr}/k/1").parse().unwrap();
        reply(h1.get(url).await.unwrap()).await.body == "b"
    })
    .await;
    let before = b.hits();
    let in_flight = spawn_get(format!("http://{addr}/slow?ms=800"));
    wait_until(
        Duration::from_secs(5),
        "the slow request to arrive",
        || async { b.hits() > before },
    )
    .await;
    sigterm_drains(child, in_flight, "b").await;
}

/// Runs ringlb with a stdout whose reading end is already closed, as
/// `ringlb ... | head -0` leaves it: every write fails with EPIPE. (A socket pair, as
/// `std::io::pipe` is newer than the crate's MSRV; a write to either says EPIPE.)
fn ringlb_into_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::os::unix::net::UnixStream::pair().expect("make a socket pair");
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(args)
        .stdout(std::os::fd::OwnedFd::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("run the ringlb binary")
}

#[test]
fn a_closed_stdout_ends_every_command_quietly_with_0() {
    let path = write_config("closed-stdout", THREE);
    let p = path.to_str().unwrap();
    for args in [
        &["check", "--config", p][..],
        &["route", "--config", p, "/a", "/b"],
        &["ring", "--config", p],
        &["diff", p, p],
        &["--help"],
        &["--version"],
    ] {
        let out = ringlb_into_closed_pipe(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stderr), "", "{args:?}");
    }
}

#[test]
fn a_full_stdout_is_one_error_sentence_and_exit_1() {
    let path = write_config("full-stdout", THREE);
    let p = path.to_str().unwrap();
    for args in [
        &["check", "--config", p][..],
        &["route", "--config", p, "/a"],
        &["ring", "--config", p],
        &["diff", p, p],
        &["--help"],
        &["--version"],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("open /dev/full");
        let out = Command::new(env!("CARGO_BIN_EXE_ringlb"))
            .args(args)
            .stdout(full)
            .stderr(Stdio::piped())
            .output()
            .expect("run the ringlb binary");
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(
            text(&out.stderr),
            "ringlb: cannot write the output: No space left on device (os error 28)\n",
            "{args:?}"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [&["--no-such-flag"][..], &["route"], &["frobnicate"]] {
        let out = ringlb(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stderr).starts_with("error: "), "{args:?}");
        assert_eq!(text(&out.stdout), "", "{args:?}");
    }
}

#[test]
fn route_with_client_ip_rejects_what_is_not_an_ip_address() {
    let path = write_config("route-not-ip", &format!("{THREE}hash:\n  key: client_ip\n"));
    let p = path.to_str().unwrap();
    let out = ringlb(&["route", "--config", p, "10.1.2.3", "10.0.0.1:5555"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stdout), "", "no table for a half-valid list");
    assert_eq!(
        text(&out.stderr),
        "ringlb route: key \"10.0.0.1:5555\" is not an IP address (hash.key starts with client_ip): give an address such as 10.0.0.1 or 2001:db8::1\n"
    );
    let out = ringlb(&["route", "--config", p, "2001:db8::1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Runs ringlb on a config whose listener's port is taken, so it logs "starting" and
/// exits 1 at once; returns what it wrote. `on_a_terminal` runs it under script(1).
fn log_a_failed_start(name: &str, no_color: Option<&str>, on_a_terminal: bool) -> String {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("take a port");
    let addr = taken.local_addr().expect("local addr");
    let path = write_config(
        name,
        &format!("listeners:\n  - bind: \"{addr}\"\nbackends:\n  - address: \"127.0.0.1:9001\"\n"),
    );
    let ringlb = format!(
        "{} --config {}",
        env!("CARGO_BIN_EXE_ringlb"),
        path.display()
    );
    let mut cmd = if on_a_terminal {
        // script(1) runs the command on a pseudo-terminal and copies what it writes.
        let mut c = Command::new("script");
        c.args(["-qec", &ringlb, "/dev/null"]);
        c
    } else {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ringlb"));
        c.args(["--config", path.to_str().unwrap()]);
        c
    };
    cmd.env("RUST_LOG", "info").env_remove("NO_COLOR");
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run ringlb");
    assert_eq!(out.status.code(), Some(1));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("starting"), "{all}");
    all
}

#[test]
fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let log = log_a_failed_start("no-tty", None, false);
    assert!(!log.contains('\u{1b}'), "{log:?}");
}

#[test]
fn on_a_terminal_logs_are_coloured_unless_no_color_is_set() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no script(1) to make a terminal");
        return;
    }
    assert!(log_a_failed_start("tty", None, true).contains('\u{1b}'));
    assert!(log_a_failed_start("tty-empty", Some(""), true).contains('\u{1b}'));
    let log = log_a_failed_start("tty-no-color", Some("1"), true);
    assert!(!log.contains('\u{1b}'), "{log:?}");
}

#[test]
fn a_reload_that_changes_workers_warns_that_it_takes_a_restart() {
    let path = write_config(
        "workers-warn",
        "listeners:\n  - bind: \"127.0.0.1:0\"\nbackends:\n  - address: \"127.0.0.1:9001\"\nworkers: 1\n",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["--config", path.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringlb");
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let wait_for = |what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(what) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {what:?}: {e}"),
            }
        }
    };
    wait_for("listening");
    let text = std::fs::read_to_string(&path).unwrap();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text.replace("workers: 1", "workers: 2")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let line = wait_for("workers changed");
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains(
            "workers changed from 1 to 2: it takes a restart, the rest of reload 2 is live"
        ),
        "{line}"
    );
    signal(&child, "-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
