//! Request -> hash: finds the key bytes named by `hash.key` in a request and hashes them
//! with xxh3. Borrows from the request; no allocation.

use std::net::IpAddr;

use http::header::{COOKIE, HOST};
use http::request::Parts;

use crate::config::KeySource;
use crate::ring::hash_key;

/// Longest host name hashed after lowercasing (DNS names stop at 253).
const MAX_HOST: usize = 255;

/// The hash of the first present source, or of the path when none is.
pub fn hash(parts: &Parts, peer: IpAddr, sources: &[KeySource]) -> u64 {
    sources
        .iter()
        .find_map(|s| hash_source(parts, peer, s))
        .unwrap_or_else(|| hash_key(parts.uri.path().as_bytes()))
}

/// What one source found in a request, still borrowed from it.
enum Found<'a> {
    /// Raw bytes, hashed as they are.
    Bytes(&'a [u8]),
    /// A host, hashed lowercased and without its port.
    Host(&'a str),
    /// The client's address.
    Ip(IpAddr),
}

/// The value `source` names in a request, `None` when absent (or empty).
fn find<'a>(parts: &'a Parts, peer: IpAddr, source: &KeySource) -> Option<Found<'a>> {
    match source {
        KeySource::Path => Some(Found::Bytes(parts.uri.path().as_bytes())),
        KeySource::Uri => Some(Found::Bytes(
            parts
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .as_bytes(),
        )),
        KeySource::Host => host(parts).map(Found::Host),
        KeySource::ClientIp => Some(Found::Ip(peer)),
        KeySource::Header(name) => parts
            .headers
            .get(name)
            .map(|v| v.as_bytes())
            .filter(|v| !v.is_empty())
            .map(Found::Bytes),
        KeySource::Cookie(name) => parts
            .headers
            .get_all(COOKIE)
            .iter()
            .find_map(|v| cookie(v.as_bytes(), name.as_bytes()))
            .map(Found::Bytes),
        KeySource::Query(name) => parts
            .uri
            .query()
            .and_then(|q| query_param(q.as_bytes(), name.as_bytes()))
            .map(Found::Bytes),
    }
}

impl Found<'_> {
    fn hash(&self) -> u64 {
        match *self {
            Found::Bytes(b) => hash_key(b),
            Found::Host(h) => hash_host(h),
            Found::Ip(ip) => hash_ip(ip),
        }
    }

    fn text(&self) -> String {
        match *self {
            Found::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            Found::Host(h) => strip_port(h).to_ascii_lowercase(),
            Found::Ip(ip) => ip.to_canonical().to_string(),
        }
    }
}

/// The hash of one source, `None` when the request does not carry it (or it is empty).
pub fn hash_source(parts: &Parts, peer: IpAddr, source: &KeySource) -> Option<u64> {
    find(parts, peer, source).map(|f| f.hash())
}

/// The key's value as `hash` read it, as text (lossy UTF-8 for raw bytes): what
/// `GET /hot` shows. Not on the request path's fast track: called only when a key
/// enters the hot-key list.
pub fn text(parts: &Parts, peer: IpAddr, sources: &[KeySource]) -> String {
    sources
        .iter()
        .find_map(|s| find(parts, peer, s))
        .unwrap_or(Found::Bytes(parts.uri.path().as_bytes()))
        .text()
}

/// The hash of a key value as a person types it (for `ringlb route`), read the way
/// `source` yields it from a request: an address for `client_ip`, a host in any case
/// and with or without port for `host`, the bytes as they are otherwise.
///
/// # Errors
/// `KeyValueError::NotAnIp` for a `client_ip` value that is not an IP address (such as
/// `10.0.0.1:5555`): no request could yield it, so its hash would route nothing.
pub fn hash_value(source: &KeySource, value: &str) -> Result<u64, KeyValueError> {
    match source {
        KeySource::ClientIp => value
            .parse()
            .map(hash_ip)
            .map_err(|_| KeyValueError::NotAnIp(value.to_owned())),
        KeySource::Host => Ok(hash_host(value)),
        _ => Ok(hash_key(value.as_bytes())),
    }
}

/// A key value, as a person types it, that its source can never yield.
#[derive(Debug, thiserror::Error)]
pub enum KeyValueError {
    /// `client_ip` keys are bare addresses: no port, no name.
    #[error("key {0:?} is not an IP address (hash.key starts with client_ip): give an address such as 10.0.0.1 or 2001:db8::1")]
    NotAnIp(String),
}

/// An IPv4 client hashes the same whether it arrived over IPv4 or IPv6 (v4-mapped).
fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash_key(&v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => hash_key(&v4.octets()),
            None => hash_key(&v6.octets()),
        },
    }
}

/// The request's host: the Host header, or the HTTP/2 `:authority`.
pub fn host(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .filter(|h| !h.is_empty())
}

/// Hosts compare case-insensitively and without the port, as nginx's `$host`.
fn hash_host(host: &str) -> u64 {
    let name = strip_port(host).as_bytes();
    let mut buf = [0u8; MAX_HOST];
    let n = name.len().min(MAX_HOST);
    for (d, s) in buf[..n].iter_mut().zip(name) {
        *d = s.to_ascii_lowercase();
    }
    hash_key(&buf[..n])
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The value of cookie `name` in one `Cookie` header (`a=1; b=2`).
fn cookie<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (k, v) = (&pair[..eq], &pair[eq + 1..]);
        let v = v
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(v);
        (k == name && !v.is_empty()).then_some(v)
    })
}

/// The raw value of query parameter `name` (`a=1&b=2`); the first one wins.
fn query_param<'a>(query: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    query.split(|&b| b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &[][..]),
        };
        (k == name && !v.is_empty()).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;
    use std::net::Ipv4Addr;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));

    #[test]
    fn each_source_hashes_its_own_bytes() {
        let p = parts(
            "/a/b?id=42&x=",
            &[
                ("host", "Example.COM:8080"),
                ("x-user", "u7"),
                ("cookie", "a=1; sid=\"s9\""),
            ],
        );
        let h = |s: &str| hash_source(&p, PEER, &KeySource::parse(s).unwrap());
        assert_eq!(h("path"), Some(hash_key(b"/a/b")));
        assert_eq!(h("uri"), Some(hash_key(b"/a/b?id=42&x=")));
        assert_eq!(h("host"), Some(hash_key(b"example.com")));
        assert_eq!(h("client_ip"), Some(hash_key(&[10, 1, 2, 3])));
        assert_eq!(h("header:X-User"), Some(hash_key(b"u7")));
        assert_eq!(h("cookie:sid"), Some(hash_key(b"s9")));
        assert_eq!(h("query:id"), Some(hash_key(b"42")));
        assert_eq!(h("query:x"), None, "empty values are absent");
        assert_eq!(h("query:nope"), None);
        assert_eq!(h("header:x-none"), None);
        assert_eq!(h("cookie:a1"), None);
    }

    #[test]
    fn a_list_falls_through_to_the_first_present_then_the_path() {
        let p = parts("/p?q=1", &[("x-b", "bee")]);
        let list = |s: &[&str]| {
            s.iter()
                .map(|s| KeySource::parse(s).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            hash(&p, PEER, &list(&["header:x-a", "header:x-b"])),
            hash_key(b"bee")
        );
        assert_eq!(
            hash(&p, PEER, &list(&["header:x-a", "cookie:c"])),
            hash_key(b"/p")
        );
    }

    #[test]
    fn hosts_ignore_case_and_port() {
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a.b"), "a.b");
        let a = parts("/", &[("host", "A.example:81")]);
        let b = parts("http://a.example/", &[]);
        let src = KeySource::Host;
        assert_eq!(hash_source(&a, PEER, &src), hash_source(&b, PEER, &src));
    }

    #[test]
    fn typed_values_hash_as_requests_yield_them() {
        let p = parts("/", &[("host", "Shop.Example:81")]);
        assert_eq!(
            hash_value(&KeySource::ClientIp, "10.1.2.3").ok(),
            hash_source(&p, PEER, &KeySource::ClientIp)
        );
        assert_eq!(
            hash_value(&KeySource::Host, "shop.example").ok(),
            hash_source(&p, PEER, &KeySource::Host)
        );
        assert_eq!(
            hash_value(&KeySource::Path, "/a").ok(),
            Some(hash_key(b"/a"))
        );
        assert!(matches!(
            hash_value(&KeySource::ClientIp, "10.0.0.1:5555"),
            Err(KeyValueError::NotAnIp(_))
        ));
    }

    #[test]
    fn v4_mapped_clients_hash_as_v4() {
        let p = parts("/", &[]);
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(
            hash_source(&p, mapped, &KeySource::ClientIp),
            hash_source(&p, PEER, &KeySource::ClientIp)
        );
    }
}
