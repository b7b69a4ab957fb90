//! Raw config -> `Config`: rules that span fields (unique names, overlapping binds,
//! non-empty lists), each failure reported with the position of the field it names.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::error::Diagnostic;
use super::raw::RawConfig;
use super::{
    Admin, Backend, Config, Hash, HealthCheck, Limits, Listener, OutlierDetection, Timeouts,
};

/// Most ring points accepted: 12 bytes each, so at most about 200 MB and a build of
/// seconds; 1,000 backends x 160 vnodes is 160,000.
pub const MAX_POINTS: u64 = 16_777_216;

/// One step of a field path.
#[derive(Debug, Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// Validates `raw` as a whole; `text` is the file it came from, re-read only to place errors.
pub(crate) fn validate(
    raw: RawConfig,
    text: &str,
    origin: &str,
) -> Result<Config, Vec<Diagnostic>> {
    let mut problems = Vec::new();
    let mut fail = |path: &[Seg], message: String| {
        problems.push(Diagnostic {
            origin: origin.to_owned(),
            position: locate(text, path),
            message: format!("{}: {message}", PathText(path)),
        });
    };

    if raw.listeners.is_empty() {
        fail(
            &[Seg::Key("listeners")],
            "expected at least one listener".into(),
        );
    }
    if raw.backends.is_empty() {
        fail(
            &[Seg::Key("backends")],
            "expected at least one backend".into(),
        );
    }

    // Certificates are read now, so a reload with a bad one fails before any change.
    let base = match Path::new(origin).parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tls: Vec<Option<Arc<crate::tls::Tls>>> = Vec::with_capacity(raw.listeners.len());
    for (i, l) in raw.listeners.iter().enumerate() {
        let Some(raw_tls) = &l.tls else {
            tls.push(None);
            continue;
        };
        if raw_tls.certificates.is_empty() {
            fail(
                &[
                    Seg::Key("listeners"),
                    Seg::Index(i),
                    Seg::Key("tls"),
                    Seg::Key("certificates"),
                ],
                "expected at least one certificate".into(),
            );
        }
        let mut loaded = Vec::new();
        for (j, c) in raw_tls.certificates.iter().enumerate() {
            match crate::tls::load_certificate(&base.join(&c.cert), &base.join(&c.key)) {
                Ok(cert) => {
                    if cert.expired() {
                        tracing::warn!(
                            cert = %cert.cert.display(),
                            "listeners[{i}].tls.certificates[{j}]: the certificate has expired; loading it anyway"
                        );
                    }
                    loaded.push(cert);
                }
                Err((field, e)) => fail(
                    &[
                        Seg::Key("listeners"),
                        Seg::Index(i),
                        Seg::Key("tls"),
                        Seg::Key("certificates"),
                        Seg::Index(j),
                        Seg::Key(match field {
                            crate::tls::Field::Cert => "cert",
                            crate::tls::Field::Key => "key",
                        }),
                    ],
                    e,
                ),
            }
        }
        let built = (!loaded.is_empty() && loaded.len() == raw_tls.certificates.len())
            .then(|| crate::tls::server_config(loaded))
            .transpose();
        match built {
            Ok(t) => tls.push(t.map(Arc::new)),
            Err(e) => {
                fail(&[Seg::Key("listeners"), Seg::Index(i), Seg::Key("tls")], e);
                tls.push(None);
            }
        }
    }

    let mut binds: Vec<SocketAddr> = Vec::with_capacity(raw.listeners.len());
    for (i, l) in raw.listeners.iter().enumerate() {
        if let Some(j) = binds.iter().position(|b| overlaps(*b, l.bind.0)) {
            fail(
                &[Seg::Key("listeners"), Seg::Index(i), Seg::Key("bind")],
                format!("{} overlaps listeners[{j}].bind ({})", l.bind.0, binds[j]),
            );
        }
        binds.push(l.bind.0);
    }

    if let Some(admin) = &raw.admin {
        if let Some(j) = binds.iter().position(|b| overlaps(*b, admin.bind.0)) {
            fail(
                &[Seg::Key("admin"), Seg::Key("bind")],
                format!(
                    "{} overlaps listeners[{j}].bind ({})",
                    admin.bind.0, binds[j]
                ),
            );
        }
    }

    let mut names: HashMap<String, usize> = HashMap::with_capacity(raw.backends.len());
    let mut backends = Vec::with_capacity(raw.backends.len());
    for (i, b) in raw.backends.into_iter().enumerate() {
        let (name, field) = match b.name {
            Some(n) => (n.0, "name"),
            None => (b.address.to_string(), "address"),
        };
        if let Some(&j) = names.get(&name) {
            fail(
                &[Seg::Key("backends"), Seg::Index(i), Seg::Key(field)],
                format!(
                    "duplicate backend name {name:?} (also backends[{j}]); names must be unique"
                ),
            );
        } else {
            names.insert(name.clone(), i);
        }
        let tls = match &b.tls {
            None => None,
            Some(t) => {
                let server_name = t
                    .server_name
                    .clone()
                    .unwrap_or_else(|| b.address.host().to_owned());
                let ca = t.ca.as_ref().map(|c| base.join(c));
                if t.insecure_skip_verify {
                    tracing::warn!(
                        backend = %b.address,
                        "backends[{i}].tls.insecure_skip_verify: certificates are not checked{}",
                        if ca.is_some() { "; ca is ignored" } else { "" }
                    );
                }
                match crate::tls::backend(ca.as_deref(), &server_name, t.insecure_skip_verify) {
                    Ok(t) => Some(Arc::new(t)),
                    Err(e) => {
                        fail(&[Seg::Key("backends"), Seg::Index(i), Seg::Key("tls")], e);
                        None
                    }
                }
            }
        };
        backends.push(Backend {
            name: Arc::from(name),
            address: b.address,
            weight: b.weight.0,
            tls,
        });
    }

    use crate::placement::{maglev, Algorithm};
    let total_weight: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    let algorithm = raw.hash.algorithm.0;
    let points = total_weight * u64::from(raw.hash.vnodes.0);
    let table_at = [Seg::Key("hash"), Seg::Key("maglev_table_size")];
    let maglev_table_size = match raw.hash.maglev_table_size {
        Some(_) if algorithm != Algorithm::Maglev => {
            fail(
                &table_at,
                format!("only used with `algorithm: maglev` (the algorithm is {algorithm})"),
            );
            0
        }
        Some(size) if size.0 < total_weight * maglev::SLOTS_PER_BACKEND => {
            fail(
                &table_at,
                format!(
                    "{} slots is below {} x the sum of weights ({total_weight}); the smallest allowed prime is {}",
                    size.0,
                    maglev::SLOTS_PER_BACKEND,
                    maglev::next_prime(total_weight * maglev::SLOTS_PER_BACKEND)
                ),
            );
            0
        }
        Some(size) => size.0,
        None => maglev::auto_table_size(total_weight),
    };
    if algorithm == Algorithm::Ring && points > MAX_POINTS {
        fail(
            &[Seg::Key("hash"), Seg::Key("vnodes")],
            format!("the ring would have {points} points (sum of weights x vnodes); at most {MAX_POINTS} are allowed"),
        );
    }

    let t = &raw.timeouts;
    for (key, span) in [
        ("connect", t.connect),
        ("response", t.response),
        ("client_header", t.client_header),
        ("idle", t.idle),
        ("client_body", t.client_body),
        ("upstream_read", t.upstream_read),
        ("upstream_write", t.upstream_write),
    ] {
        if span.0.is_zero() {
            fail(
                &[Seg::Key("timeouts"), Seg::Key(key)],
                "expected a duration greater than 0".into(),
            );
        }
    }

    if let Some(h) = &raw.health_check {
        for (key, span) in [("interval", h.interval), ("timeout", h.timeout)] {
            if span.0.is_zero() {
                fail(
                    &[Seg::Key("health_check"), Seg::Key(key)],
                    "expected a duration greater than 0".into(),
                );
            }
        }
    }
    if raw.outlier_detection.ejection_time.0.is_zero() {
        fail(
            &[Seg::Key("outlier_detection"), Seg::Key("ejection_time")],
            "expected a duration greater than 0".into(),
        );
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Config {
        origin: origin.to_owned(),
        source_hash: 0,
        listeners: binds
            .into_iter()
            .zip(tls)
            .map(|(bind, tls)| Listener { bind, tls })
            .collect(),
        hash: Hash {
            key: raw.hash.key.0,
            vnodes: raw.hash.vnodes.0,
            algorithm,
            balance_factor: raw.hash.balance_factor.map(|f| f.0),
            maglev_table_size,
        },
        backends,
        timeouts: Timeouts {
            connect: t.connect.0,
            response: t.response.0,
            client_header: t.client_header.0,
            idle: t.idle.0,
            shutdown: t.shutdown.0,
            client_body: t.client_body.0,
            upstream_read: t.upstream_read.0,
            upstream_write: t.upstream_write.0,
        },
        retries: raw.retries.0,
        limits: Limits {
            max_connections: raw.limits.max_connections.0,
            max_header_bytes: raw.limits.max_header_bytes.0,
            max_admin_connections: raw.limits.max_admin_connections.0,
        },
        workers: raw.workers.0,
        access_log: raw.access_log,
        hot_keys: raw.hot_keys,
        admin: raw.admin.map(|a| Admin { bind: a.bind.0 }),
        health_check: raw.health_check.map(|h| HealthCheck {
            path: h.path.0,
            interval: h.interval.0,
            timeout: h.timeout.0,
            healthy_threshold: h.healthy_threshold.0,
            unhealthy_threshold: h.unhealthy_threshold.0,
        }),
        outlier_detection: OutlierDetection {
            consecutive_failures: raw.outlier_detection.consecutive_failures.0,
            ejection_time: raw.outlier_detection.ejection_time.0,
        },
    })
}

/// Two binds collide when the ports match and the IPs match or one is the wildcard
/// of the same family: the second `bind()` would fail with "address in use".
/// Linux's `[::]` is dual-stack by default, so it also covers every IPv4 address.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    let wildcard_v6 = |x: SocketAddr| x.is_ipv6() && x.ip().is_unspecified();
    // Port 0 asks the OS for a free port: such binds never collide.
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified()))
            || wildcard_v6(a)
            || wildcard_v6(b))
}

struct PathText<'a>(&'a [Seg<'a>]);

impl fmt::Display for PathText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Finds the line and column of the node at `path` by walking the YAML again and
/// failing inside the target's visitor, which is where serde_yaml records a position.
fn locate(text: &str, path: &[Seg]) -> Option<(usize, usize)> {
    let err = Locate(path)
        .deserialize(serde_yaml::Deserializer::from_str(text))
        .err()?;
    err.location().map(|l| (l.line(), l.column()))
}

struct Locate<'a>(&'a [Seg<'a>]);

impl<'de> DeserializeSeed<'de> for Locate<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Locate<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the located node")
    }

    // Every scalar visit on the target (or on a mismatching node) falls back to
    // serde's default, which errors here, so the position is the node's own.

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Seg::Key(want), rest)) = self.0.split_first() else {
            return Err(de::Error::custom("here"));
        };
        while let Some(key) = map.next_key::<String>()? {
            if key == *want {
                return map.next_value_seed(Locate(rest));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Seg::Index(want), rest)) = self.0.split_first() else {
            return Err(de::Error::custom("here"));
        };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Locate(rest)).map(|_| ())
    }
}
