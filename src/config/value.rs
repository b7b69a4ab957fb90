//! Validated scalars of `lb.yaml`, each checked inside its serde visitor so that
//! serde_yaml reports the scalar's own line and column. No cross-field rules here.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use http::header::HeaderName;
use serde::de::{self, Deserialize, Deserializer, Visitor};

/// Checks an unsigned integer against an inclusive range inside the visitor.
struct BoundedVisitor {
    min: u64,
    max: u64,
}

impl<'de> Visitor<'de> for BoundedVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an integer {}..={}", self.min, self.max)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        if (self.min..=self.max).contains(&v) {
            Ok(v)
        } else {
            Err(E::custom(format_args!(
                "expected an integer {}..={}, got {v}",
                self.min, self.max
            )))
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(format_args!(
                "expected an integer {}..={}, got {v}",
                self.min, self.max
            ))),
        }
    }
}

/// Declares a newtype over an integer that only deserializes within `min..=max`.
macro_rules! bounded_int {
    ($(#[$doc:meta])* $name:ident($t:ty), $min:expr, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub $t);

        impl $name {
            /// The smallest accepted value.
            pub const MIN: $t = $min;
            /// The largest accepted value.
            pub const MAX: $t = $max;
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = d.deserialize_u64(BoundedVisitor { min: $min as u64, max: $max as u64 })?;
                // In range by the visitor, and the range fits the type.
                <$t>::try_from(v).map($name).map_err(de::Error::custom)
            }
        }
    };
}

bounded_int!(
    /// A backend's share of the ring relative to the others; 0 drains it.
    Weight(u32), 0, 1000
);
bounded_int!(
    /// Ring points per unit of weight.
    Vnodes(u32), 1, 10_000
);
bounded_int!(
    /// Extra attempts on other backends when a connection cannot be made.
    Retries(u32), 0, 100
);
bounded_int!(
    /// Runtime worker threads; 0 means one per core.
    Workers(usize), 0, 1024
);
bounded_int!(
    /// Client connections open at once.
    MaxConnections(usize), 1, 10_000_000
);
bounded_int!(
    /// Largest accepted request head: the HTTP/1 read buffer (hyper needs at least 8 KiB)
    /// and the HTTP/2 header list limit. Past it the client gets 431.
    MaxHeaderBytes(usize), 8192, 1_048_576
);

bounded_int!(
    /// Consecutive check results needed to change a backend's state.
    Threshold(u32), 1, 100
);
bounded_int!(
    /// Consecutive failed requests that eject a backend; 0 turns passive ejection off.
    FailureCount(u32), 0, 10_000
);

/// The path an active health check requests: origin-form, starting with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckPath(pub http::uri::PathAndQuery);

impl<'de> Deserialize<'de> for CheckPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = CheckPath;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a path such as /healthz")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CheckPath, E> {
                match v.parse::<http::uri::PathAndQuery>() {
                    Ok(p) if v.starts_with('/') => Ok(CheckPath(p)),
                    _ => Err(E::custom(format_args!(
                        "expected a path starting with / such as /healthz, got {v:?}"
                    ))),
                }
            }
        }
        d.deserialize_str(V)
    }
}

/// Longest accepted duration: beyond a day a timeout is a mistake, and deadlines far
/// in the future overflow the clock.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A duration written with a unit (`250ms`, `2s`, `1m`), like nginx and Envoy accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Span;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration with a unit such as 250ms, 2s or 1m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Span, E> {
                let d = humantime::parse_duration(v.trim()).map_err(|_| {
                    E::custom(format_args!(
                        "expected a duration with a unit such as 250ms, 2s or 1m, got {v:?}"
                    ))
                })?;
                if d > MAX_DURATION {
                    return Err(E::custom(format_args!(
                        "expected a duration of at most 24h, got {v:?}"
                    )));
                }
                Ok(Span(d))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Span, E> {
                Err(E::custom(format_args!(
                    "expected a duration with a unit such as 250ms, 2s or 1m, got {v} (add a unit)"
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Span, E> {
                Err(E::custom(format_args!(
                    "expected a duration with a unit such as 250ms, 2s or 1m, got {v}"
                )))
            }
        }
        d.deserialize_str(V)
    }
}

/// A listener address: an IP literal and a port, since a listener binds before any DNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAddr(pub SocketAddr);

impl<'de> Deserialize<'de> for BindAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = BindAddr;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an address such as \"127.0.0.1:8080\" or \"[::]:8080\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BindAddr, E> {
                v.parse().map(BindAddr).map_err(|_| {
                    E::custom(format_args!(
                        "expected an IP address and port such as \"127.0.0.1:8080\" or \"[::]:8080\", got {v:?}"
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// A backend address: `host:port` where host is an IP literal or a DNS name
/// (resolved when a connection is made, so a name can follow DNS changes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    host: String,
    port: u16,
    ip: Option<SocketAddr>,
}

impl Address {
    /// Parses `host:port`, `ip:port` or `[ipv6]:port`.
    ///
    /// # Errors
    /// A sentence saying what was expected.
    pub fn parse(v: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "expected host:port such as \"127.0.0.1:9001\" or \"app.internal:80\", got {v:?}"
            )
        };
        if let Ok(sa) = v.parse::<SocketAddr>() {
            return Ok(Address {
                host: sa.ip().to_string(),
                port: sa.port(),
                ip: Some(sa),
            });
        }
        let (host, port) = v.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid_host || port == 0 {
            return Err(bad());
        }
        Ok(Address {
            host: host.to_ascii_lowercase(),
            port,
            ip: None,
        })
    }

    /// The socket address when the host is an IP literal; `None` means resolve `host()` first.
    pub fn ip(&self) -> Option<SocketAddr> {
        self.ip
    }

    /// The host part, as an IP or a DNS name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.ip {
            Some(sa) => sa.fmt(f),
            None => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Address;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("host:port")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Address, E> {
                Address::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// A backend name: it seeds the ring positions, so it must be stable and printable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(pub String);

/// Longest accepted backend name; names appear in logs and metric labels.
pub const MAX_NAME_LEN: usize = 128;

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a backend name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Name, E> {
                if v.is_empty()
                    || v.len() > MAX_NAME_LEN
                    || v.chars().any(|c| c.is_control() || c.is_whitespace())
                {
                    return Err(E::custom(format_args!(
                        "expected a name of 1 to {MAX_NAME_LEN} characters without spaces, got {v:?}"
                    )));
                }
                Ok(Name(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Name, E> {
                Ok(Name(v.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

/// Where a request's hash key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The URI path, without the query.
    Path,
    /// Path and query, as sent.
    Uri,
    /// The host (Host header or HTTP/2 authority), lowercased, without port.
    Host,
    /// The client's IP address as seen by the proxy.
    ClientIp,
    /// The first value of a request header.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
    /// A query parameter's raw (not percent-decoded) value.
    Query(String),
}

const KEY_SOURCES: &str = "path, uri, host, client_ip, header:NAME, cookie:NAME or query:NAME";

impl KeySource {
    /// Parses one source as written in `hash.key`.
    ///
    /// # Errors
    /// A sentence naming the accepted forms.
    pub fn parse(v: &str) -> Result<Self, String> {
        let bad = || format!("expected one of {KEY_SOURCES}, got {v:?}");
        match v {
            "path" => return Ok(KeySource::Path),
            "uri" => return Ok(KeySource::Uri),
            "host" => return Ok(KeySource::Host),
            "client_ip" => return Ok(KeySource::ClientIp),
            _ => {}
        }
        let (kind, name) = v.split_once(':').ok_or_else(bad)?;
        if name.is_empty() {
            return Err(bad());
        }
        match kind {
            "header" => HeaderName::from_bytes(name.as_bytes())
                .map(KeySource::Header)
                .map_err(|_| format!("{name:?} is not a valid header name")),
            "cookie" => Ok(KeySource::Cookie(name.to_owned())),
            "query" => Ok(KeySource::Query(name.to_owned())),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            KeySource::Path => f.write_str("path"),
            KeySource::Uri => f.write_str("uri"),
            KeySource::Host => f.write_str("host"),
            KeySource::ClientIp => f.write_str("client_ip"),
            KeySource::Header(n) => write!(f, "header:{n}"),
            KeySource::Cookie(n) => write!(f, "cookie:{n}"),
            KeySource::Query(n) => write!(f, "query:{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for KeySource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeySource;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "one of {KEY_SOURCES}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeySource, E> {
                KeySource::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// `hash.key`: one source, or a list tried in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec(pub Vec<KeySource>);

impl<'de> Deserialize<'de> for KeySpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeySpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a key source ({KEY_SOURCES}) or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeySpec, E> {
                KeySource::parse(v)
                    .map(|s| KeySpec(vec![s]))
                    .map_err(E::custom)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<KeySpec, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<KeySource>()? {
                    out.push(s);
                }
                if out.is_empty() {
                    return Err(de::Error::custom(format_args!(
                        "expected at least one key source ({KEY_SOURCES})"
                    )));
                }
                Ok(KeySpec(out))
            }
        }
        d.deserialize_any(V)
    }
}

impl Default for KeySpec {
    fn default() -> Self {
        KeySpec(vec![KeySource::Path])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_ip_and_names() {
        assert_eq!(
            Address::parse("127.0.0.1:9001").unwrap().ip(),
            Some("127.0.0.1:9001".parse().unwrap())
        );
        assert_eq!(Address::parse("[::1]:80").unwrap().port(), 80);
        let named = Address::parse("App.internal:8080").unwrap();
        assert_eq!(
            (named.host(), named.port(), named.ip()),
            ("app.internal", 8080, None)
        );
        for bad in [
            "",
            "nohost",
            "127.0.0.1",
            "a:b",
            "a:70000",
            ":80",
            "a b:80",
            "x:0",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn key_sources_parse() {
        assert_eq!(KeySource::parse("client_ip"), Ok(KeySource::ClientIp));
        assert_eq!(
            KeySource::parse("header:X-User"),
            Ok(KeySource::Header(HeaderName::from_static("x-user")))
        );
        assert_eq!(
            KeySource::parse("cookie:sid"),
            Ok(KeySource::Cookie("sid".into()))
        );
        assert_eq!(
            KeySource::parse("query:id"),
            Ok(KeySource::Query("id".into()))
        );
        for bad in ["paths", "header:", "header:bad name", "foo:bar", ""] {
            assert!(KeySource::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }
}

/// `hash.algorithm`: one of the placement algorithms, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AlgorithmName(pub crate::placement::Algorithm);

impl<'de> Deserialize<'de> for AlgorithmName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = AlgorithmName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("one of ring, maglev, rendezvous, multiprobe")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AlgorithmName, E> {
                crate::placement::Algorithm::ALL
                    .iter()
                    .find(|(name, _)| *name == v)
                    .map(|&(_, a)| AlgorithmName(a))
                    .ok_or_else(|| {
                        E::custom(format_args!(
                            "unknown algorithm {v:?}; expected one of ring, maglev, rendezvous, multiprobe"
                        ))
                    })
            }
        }
        d.deserialize_str(V)
    }
}

/// `hash.maglev_table_size`: a prime, checked here; its floor (100 slots per unit of
/// weight) depends on the backends and is checked in `validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSize(pub u64);

/// The largest Maglev table: 2^24 slots (64 MiB of u32), far past 100 × 10,000 backends.
pub const MAX_TABLE_SIZE: u64 = 1 << 24;

impl<'de> Deserialize<'de> for TableSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TableSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a prime number of table slots")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TableSize, E> {
                use crate::placement::maglev::{is_prime, next_prime};
                if v > MAX_TABLE_SIZE {
                    return Err(E::custom(format_args!(
                        "expected a prime of at most {MAX_TABLE_SIZE}, got {v}"
                    )));
                }
                if !is_prime(v) {
                    return Err(E::custom(format_args!(
                        "expected a prime, got {v}; the next prime is {}",
                        next_prime(v)
                    )));
                }
                Ok(TableSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TableSize, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format_args!("expected a prime, got {v}"))),
                }
            }
        }
        d.deserialize_u64(V)
    }
}

/// `hash.balance_factor`: bounded loads' `c`, 1.01..=100.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalanceFactor(pub f64);

impl<'de> Deserialize<'de> for BalanceFactor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = BalanceFactor;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number 1.01..=100")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<BalanceFactor, E> {
                if (1.01..=100.0).contains(&v) {
                    Ok(BalanceFactor(v))
                } else {
                    Err(E::custom(format_args!(
                        "expected a number 1.01..=100, got {v}"
                    )))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<BalanceFactor, E> {
                self.visit_f64(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<BalanceFactor, E> {
                self.visit_f64(v as f64)
            }
        }
        d.deserialize_f64(V)
    }
}
