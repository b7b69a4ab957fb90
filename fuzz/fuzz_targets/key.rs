//! Fuzzes the key extractor (`key::hash`, `key::hash_source`) with requests built from
//! arbitrary URIs, headers and cookies and arbitrary key source lists. Checks
//! invariants only.
//!
//! Input, line by line (text, so seeds read like requests and mutations stay close):
//! line 1 the key sources as `hash.key` writes them, comma-separated; line 2 the client
//! address (any bytes: what is not an address picks one from the bytes); line 3 the
//! request target; every further line a header `name:value`.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::header::{HeaderName, HeaderValue, HOST};
use http::request::Parts;
use http::{Request, Uri};
use libfuzzer_sys::fuzz_target;
use ringlb::config::KeySource;
use ringlb::key;

struct Input<'a> {
    sources: Vec<KeySource>,
    peer: IpAddr,
    target: &'a [u8],
    headers: Vec<(&'a [u8], &'a [u8])>,
}

fn read(data: &[u8]) -> Input<'_> {
    let mut lines = data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let sources = lines
        .next()
        .unwrap_or_default()
        .split(|&b| b == b',')
        .filter_map(|s| KeySource::parse(std::str::from_utf8(s.trim_ascii()).ok()?).ok())
        .collect();
    let peer = peer(lines.next().unwrap_or_default());
    let target = lines.next().unwrap_or_default();
    let headers = lines
        .filter_map(|l| {
            let colon = l.iter().position(|&b| b == b':')?;
            Some((&l[..colon], l[colon + 1..].trim_ascii()))
        })
        .collect();
    Input {
        sources,
        peer,
        target,
        headers,
    }
}

fn peer(line: &[u8]) -> IpAddr {
    if let Some(ip) = std::str::from_utf8(line).ok().and_then(|s| s.parse().ok()) {
        return ip;
    }
    if line.len() >= 16 {
        let octets: [u8; 16] = line[..16].try_into().expect("16 bytes");
        IpAddr::V6(Ipv6Addr::from(octets))
    } else {
        let mut o = [0u8; 4];
        o.iter_mut().zip(line).for_each(|(d, s)| *d = *s);
        IpAddr::V4(Ipv4Addr::from(o))
    }
}

/// The request as a server would hand it over; `host` replaces the first Host value.
fn parts(input: &Input, host: Option<&HeaderValue>) -> Parts {
    // What http refuses never reaches the extractor; fall back to a path.
    let uri = Uri::try_from(input.target).unwrap_or_else(|_| Uri::from_static("/"));
    let mut req = Request::builder().uri(uri).body(()).expect("a parsed Uri");
    let headers = req.headers_mut();
    let mut host = host;
    for &(n, v) in &input.headers {
        let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) else {
            continue;
        };
        let v = match host.take() {
            Some(h) if n == HOST => h.clone(),
            other => {
                host = other;
                v
            }
        };
        headers.append(n, v);
    }
    req.into_parts().0
}

fuzz_target!(|data: &[u8]| {
    let input = read(data);
    let p = parts(&input, None);
    let peer = input.peer;
    let h = key::hash(&p, peer, &input.sources);

    // The first source present decides; with none, the path.
    let path = key::hash_source(&p, peer, &KeySource::Path).expect("a path is always there");
    let first = input
        .sources
        .iter()
        .find_map(|s| key::hash_source(&p, peer, s));
    assert_eq!(h, first.unwrap_or(path));

    // `ringlb route` hashes typed values as requests yield them.
    assert_eq!(
        key::hash_source(&p, peer, &KeySource::ClientIp),
        Some(key::hash_value(&KeySource::ClientIp, &peer.to_string()))
    );
    if let Some(name) = key::host(&p) {
        assert_eq!(
            key::hash_source(&p, peer, &KeySource::Host),
            Some(key::hash_value(&KeySource::Host, name))
        );
    }

    // Hosts compare without case.
    if let Some(v) = p.headers.get(HOST).filter(|v| v.to_str().is_ok()) {
        let upper = HeaderValue::from_bytes(&v.as_bytes().to_ascii_uppercase())
            .expect("uppercasing visible ASCII keeps a valid value");
        let q = parts(&input, Some(&upper));
        assert_eq!(
            key::hash_source(&p, peer, &KeySource::Host),
            key::hash_source(&q, peer, &KeySource::Host)
        );
    }
});
