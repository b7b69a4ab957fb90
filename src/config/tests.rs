//! Config errors as users read them: one sentence each, `file:line:col`, the field path.

use super::*;

fn err(yaml: &str) -> String {
    match from_str(yaml, "lb.yaml") {
        Ok(_) => panic!("expected an error for:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

const HEAD: &str = "listeners:\n  - bind: \"127.0.0.1:8080\"\n";

#[test]
fn minimal_config_gets_every_default() {
    let c = from_str(
        &format!("{HEAD}backends:\n  - address: \"127.0.0.1:9001\"\n"),
        "lb.yaml",
    )
    .unwrap();
    assert_eq!(c.hash.key, vec![KeySource::Path]);
    assert_eq!(c.hash.vnodes, DEFAULT_VNODES);
    assert_eq!(
        &*c.backends[0].name, "127.0.0.1:9001",
        "the name defaults to the address"
    );
    assert_eq!(c.backends[0].weight, 1);
    assert_eq!(c.retries, 2);
    assert_eq!(c.timeouts.connect, Duration::from_secs(2));
    assert_eq!(c.timeouts.response, Duration::from_secs(30));
    assert_eq!(c.timeouts.client_header, Duration::from_secs(10));
    assert_eq!(c.timeouts.idle, Duration::from_secs(60));
    assert_eq!(c.timeouts.shutdown, Duration::from_secs(30));
    assert_eq!(c.limits.max_connections, 10_000);
    assert_eq!(c.limits.max_header_bytes, 65_536);
    assert_eq!(c.workers, 0);
}

#[test]
fn the_shipped_lb_yaml_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lb.yaml");
    let c = load(&path).unwrap();
    assert_eq!(c.backends.len(), 3);
    assert_eq!(c.hash.vnodes, 160);
}

#[test]
fn durations_take_units() {
    let c = from_str(
        &format!("{HEAD}backends:\n  - address: \"a.internal:80\"\ntimeouts:\n  connect: 250ms\n  idle: 1m\n"),
        "lb.yaml",
    )
    .unwrap();
    assert_eq!(c.timeouts.connect, Duration::from_millis(250));
    assert_eq!(c.timeouts.idle, Duration::from_secs(60));
}

#[test]
fn scalar_errors_point_at_the_scalar() {
    let yaml = format!("{HEAD}backends:\n  - address: \"127.0.0.1:9001\"\n  - address: \"127.0.0.1:9002\"\n    weight: 1001\n");
    assert_eq!(
        err(&yaml),
        "lb.yaml:6:13: backends[1].weight: expected an integer 0..=1000, got 1001"
    );

    let yaml = format!("{HEAD}hash:\n  vnodes: 0\nbackends:\n  - address: \"127.0.0.1:9001\"\n");
    assert_eq!(
        err(&yaml),
        "lb.yaml:4:11: hash.vnodes: expected an integer 1..=10000, got 0"
    );

    let yaml =
        format!("{HEAD}backends:\n  - address: \"127.0.0.1:9001\"\ntimeouts:\n  response: 30\n");
    assert_eq!(
        err(&yaml),
        "lb.yaml:6:13: timeouts.response: expected a duration with a unit such as 250ms, 2s or 1m, got \"30\""
    );

    let yaml =
        "listeners:\n  - bind: \"localhost:80\"\nbackends:\n  - address: \"127.0.0.1:9001\"\n";
    assert_eq!(
        err(yaml),
        "lb.yaml:2:11: listeners[0].bind: expected an IP address and port such as \"127.0.0.1:8080\" or \"[::]:8080\", got \"localhost:80\""
    );

    let yaml = format!("{HEAD}backends:\n  - address: \"127.0.0.1\"\n");
    assert_eq!(
        err(&yaml),
        "lb.yaml:4:14: backends[0].address: expected host:port such as \"127.0.0.1:9001\" or \"app.internal:80\", got \"127.0.0.1\""
    );

    let yaml = format!(
        "{HEAD}hash:\n  key: [path, \"cookie:\"]\nbackends:\n  - address: \"127.0.0.1:9001\"\n"
    );
    assert!(
        err(&yaml).starts_with("lb.yaml:4:15: hash.key[1]: expected one of path, uri"),
        "{}",
        err(&yaml)
    );
}

#[test]
fn unknown_keys_are_errors() {
    let yaml = format!("{HEAD}backends:\n  - address: \"127.0.0.1:9001\"\n    wieght: 2\n");
    let e = err(&yaml);
    assert!(
        e.starts_with("lb.yaml:5:5: backends[0]: unknown field `wieght`, expected one of"),
        "{e}"
    );

    let yaml = format!("{HEAD}backends:\n  - address: \"127.0.0.1:9001\"\nretry: 3\n");
    assert!(
        err(&yaml).starts_with("lb.yaml:5:1: unknown field `retry`"),
        "{}",
        err(&yaml)
    );
}

#[test]
fn missing_required_fields_are_named() {
    assert_eq!(err(HEAD), "lb.yaml:1:1: missing field `backends`");
    assert_eq!(
        err(&format!("{HEAD}backends:\n  - name: x\n")),
        "lb.yaml:4:5: backends[0]: missing field `address`"
    );
}

#[test]
fn cross_field_rules_report_every_failure_at_its_field() {
    let yaml = "listeners:\n  - bind: \"127.0.0.1:8080\"\n  - bind: \"0.0.0.0:8080\"\nbackends:\n  - name: a\n    address: \"127.0.0.1:1\"\n  - name: a\n    address: \"127.0.0.1:2\"\n  - address: \"127.0.0.1:3\"\n  - address: \"127.0.0.1:3\"\ntimeouts:\n  connect: 0s\n";
    assert_eq!(
        err(yaml),
        [
            "lb.yaml:3:11: listeners[1].bind: 0.0.0.0:8080 overlaps listeners[0].bind (127.0.0.1:8080)",
            "lb.yaml:7:11: backends[1].name: duplicate backend name \"a\" (also backends[0]); names must be unique",
            "lb.yaml:10:14: backends[3].address: duplicate backend name \"127.0.0.1:3\" (also backends[2]); names must be unique",
            "lb.yaml:12:12: timeouts.connect: expected a duration greater than 0",
        ]
        .join("\n")
    );
}

#[test]
fn empty_lists_are_errors() {
    assert_eq!(
        err("listeners: []\nbackends: []\n"),
        "lb.yaml:1:12: listeners: expected at least one listener\nlb.yaml:2:11: backends: expected at least one backend"
    );
}

#[test]
fn broken_yaml_and_empty_files_say_where() {
    assert_eq!(
        err("listeners: [\n"),
        "lb.yaml:2:1: did not find expected node content, while parsing a flow node"
    );
    assert_eq!(
        err(""),
        "lb.yaml: the file is empty; expected at least `listeners` and `backends`"
    );
}

#[test]
fn an_unreadable_file_names_the_path() {
    let e = load(std::path::Path::new("/nonexistent/lb.yaml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/nonexistent/lb.yaml: cannot read the config: "),
        "{e}"
    );
}

#[test]
fn health_keys_take_defaults_and_are_checked() {
    let base = format!("{HEAD}backends:\n  - address: \"127.0.0.1:9001\"\n");
    let c = from_str(&base, "lb.yaml").unwrap();
    assert_eq!(c.health_check, None, "absent means no active checks");
    assert_eq!(c.outlier_detection.consecutive_failures, 5);
    assert_eq!(c.outlier_detection.ejection_time, Duration::from_secs(30));

    let c = from_str(&format!("{base}health_check: {{}}\n"), "lb.yaml").unwrap();
    let h = c.health_check.unwrap();
    assert_eq!(
        (
            h.path.as_str(),
            h.interval,
            h.timeout,
            h.healthy_threshold,
            h.unhealthy_threshold
        ),
        (
            "/healthz",
            Duration::from_secs(2),
            Duration::from_secs(1),
            2,
            3
        )
    );

    assert_eq!(
        err(&format!("{base}health_check:\n  path: healthz\n")),
        "lb.yaml:6:9: health_check.path: expected a path starting with / such as /healthz, got \"healthz\""
    );
    assert_eq!(
        err(&format!("{base}health_check:\n  unhealthy_threshold: 0\n")),
        "lb.yaml:6:24: health_check.unhealthy_threshold: expected an integer 1..=100, got 0"
    );
    assert_eq!(
        err(&format!("{base}health_check:\n  interval: 0s\n")),
        "lb.yaml:6:13: health_check.interval: expected a duration greater than 0"
    );
    assert!(err(&format!("{base}outlier_detection:\n  ejection: 1s\n")).starts_with(
        "lb.yaml:6:3: outlier_detection: unknown field `ejection`, expected `consecutive_failures` or `ejection_time`"
    ));
}

#[test]
fn admin_and_access_log_keys() {
    let base = format!("{HEAD}backends:\n  - address: \"127.0.0.1:9001\"\n");
    let c = from_str(&base, "lb.yaml").unwrap();
    assert!(c.access_log, "on by default");
    assert_eq!(c.admin, None, "absent means no admin listener");
    let c = from_str(
        &format!("{base}access_log: false\nadmin:\n  bind: \"127.0.0.1:9901\"\n"),
        "lb.yaml",
    )
    .unwrap();
    assert!(!c.access_log);
    assert_eq!(c.admin.unwrap().bind, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(
        err(&format!("{base}admin:\n  bind: \"0.0.0.0:8080\"\n")),
        "lb.yaml:6:9: admin.bind: 0.0.0.0:8080 overlaps listeners[0].bind (127.0.0.1:8080)"
    );
    assert!(err(&format!("{base}access_log: yes please\n"))
        .starts_with("lb.yaml:5:13: access_log: invalid type"));
}
