//! Header rewriting between client and backend: hop-by-hop removal (RFC 9110 §7.6.1,
//! including names listed in `Connection`) and `X-Forwarded-*`. Pure `HeaderMap` functions.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Headers that describe one connection, never the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// True for a name of `HOP_BY_HOP`: string compares, where `HeaderName` comparisons
/// cost ~50 instructions a field.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// True for a `Connection` token that may name a field to remove: not one of the
/// options, which are hop-by-hop names themselves or `close`.
fn names_a_field(token: &str) -> bool {
    !["close", "keep-alive", "upgrade", "te"]
        .iter()
        .any(|s| token.eq_ignore_ascii_case(s))
}

/// Fields a `Connection` token must not remove: the message's framing and target.
/// `Connection: content-length` would otherwise send a body with no length to the
/// backend, which would read it as the next request (smuggling).
fn frames_the_message(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH || name == header::HOST
}

/// True when a `Connection` header lists `token` (case-insensitive).
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers and every header the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass comparing names (no hashing) spares the six
    // hashed removals below (callgrind: ~1,000 instructions a request).
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Connection usually lists only standard tokens; collect names only when it does not.
    let listed: Vec<HeaderName> = if headers.contains_key(header::CONNECTION) {
        connection_tokens(headers)
            .filter(|t| names_a_field(t))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| !frames_the_message(n))
            .collect()
    } else {
        Vec::new()
    };
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Joins several `Cookie` fields into one, as HTTP/2 allows them split and HTTP/1.1
/// backends expect one (RFC 9113 §8.2.3).
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// The client's IP as an `X-Forwarded-For` element; made once per connection.
pub fn forwarded_for(client: IpAddr) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(client.to_string()))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown")) // an IP is always valid
}

/// What the proxy adds to a request on its way to a backend.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The client's address as an `X-Forwarded-For` element.
    pub client: &'a [u8],
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub proto: &'static str,
    /// The host the client addressed (Host, or HTTP/2's `:authority`): sent as
    /// `X-Forwarded-Host`, and as Host when the request has none.
    pub host: Option<&'a [u8]>,
    /// The protocol an Upgrade request asks for; the tunnel needs both headers again.
    pub upgrade: Option<&'a [u8]>,
}

/// Writes the header section a backend receives, one `name: value` line per field,
/// straight from the client's `HeaderMap` (no map is changed or built): hop-by-hop
/// fields and those `Connection` names are left out; Host is kept, or added from
/// `fwd.host`, else from `fallback_host`; `X-Forwarded-For` gets the client appended to
/// what it had, in one field; `X-Forwarded-Proto` and `X-Forwarded-Host` replace what
/// the client sent.
pub fn write_upstream_fields(
    out: &mut Vec<u8>,
    headers: &HeaderMap,
    fwd: &Forwarding<'_>,
    fallback_host: Option<&dyn std::fmt::Display>,
) {
    // Whether Connection names any field is decided once, not per field: most clients
    // send only `keep-alive` or `close`.
    let listed = connection_tokens(headers).any(names_a_field);
    let (mut has_host, mut earlier_xff) = (false, false);
    for (name, value) in headers {
        if is_hop_by_hop(name) || name == X_FORWARDED_PROTO || name == X_FORWARDED_HOST {
            continue;
        }
        if name == X_FORWARDED_FOR {
            earlier_xff = true;
            continue;
        }
        if listed && !frames_the_message(name) && connection_has(headers, name.as_str()) {
            continue;
        }
        has_host |= name == header::HOST;
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !has_host {
        if let Some(h) = fwd.host {
            field(out, b"host", h);
        } else if let Some(h) = fallback_host {
            use std::io::Write;
            // Writing into a Vec cannot fail.
            let _ = write!(out, "host: {h}\r\n");
        }
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if earlier_xff {
        for v in headers.get_all(&X_FORWARDED_FOR) {
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(fwd.client);
    out.extend_from_slice(b"\r\n");
    field(out, b"x-forwarded-proto", fwd.proto.as_bytes());
    if let Some(h) = fwd.host {
        field(out, b"x-forwarded-host", h);
    }
    if let Some(p) = fwd.upgrade {
        field(out, b"connection", b"upgrade");
        field(out, b"upgrade", p);
    }
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn removes_standard_and_connection_listed_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-secret", "s"),
            ("x-kept", "k"),
            ("host", "h"),
        ]);
        remove_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept", "host"]);
    }

    fn upstream(h: &HeaderMap, fwd: &Forwarding<'_>, fallback: Option<&str>) -> String {
        let mut out = Vec::new();
        write_upstream_fields(
            &mut out,
            h,
            fwd,
            fallback.as_ref().map(|f| f as &dyn std::fmt::Display),
        );
        String::from_utf8(out).unwrap()
    }

    const FWD: Forwarding<'static> = Forwarding {
        client: b"10.0.0.9",
        proto: "http",
        host: Some(b"a.test"),
        upgrade: None,
    };

    #[test]
    fn upstream_fields_drop_hop_by_hop_and_rewrite_forwarding() {
        let h = map(&[
            ("host", "a.test"),
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("x-secret", "s"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.test"),
            ("x-kept", "k"),
        ]);
        assert_eq!(
            upstream(&h, &FWD, Some("10.1.1.1:80")),
            "host: a.test\r\nx-kept: k\r\n\
             x-forwarded-for: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: a.test\r\n"
        );
    }

    #[test]
    fn connection_cannot_remove_framing_or_host() {
        let h = map(&[
            ("host", "a.test"),
            ("content-length", "44"),
            ("connection", "content-length, host, x-gone"),
            ("x-gone", "1"),
        ]);
        assert_eq!(
            upstream(&h, &FWD, None),
            "host: a.test\r\ncontent-length: 44\r\nx-forwarded-for: 10.0.0.9\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: a.test\r\n"
        );
        let mut h = h;
        remove_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["host", "content-length"]);
    }

    #[test]
    fn upstream_fields_add_host_and_upgrade() {
        let h2 = Forwarding {
            host: Some(b"h2.test"),
            ..FWD
        };
        assert_eq!(
            upstream(&HeaderMap::new(), &h2, None),
            "host: h2.test\r\nx-forwarded-for: 10.0.0.9\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: h2.test\r\n"
        );
        let http10 = Forwarding {
            host: None,
            client: b"::1",
            ..FWD
        };
        assert_eq!(
            upstream(&HeaderMap::new(), &http10, Some("10.1.1.1:80")),
            "host: 10.1.1.1:80\r\nx-forwarded-for: ::1\r\nx-forwarded-proto: http\r\n"
        );
        let ws = Forwarding {
            upgrade: Some(b"websocket"),
            ..FWD
        };
        let h = map(&[
            ("host", "a.test"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(
            upstream(&h, &ws, None),
            "host: a.test\r\nx-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: a.test\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
        );
    }

    #[test]
    fn split_cookies_are_joined() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2; c=3");
        let mut one = map(&[("cookie", "a=1")]);
        join_cookies(&mut one);
        assert_eq!(one["cookie"], "a=1");
    }

    #[test]
    fn connection_tokens_are_case_insensitive() {
        assert!(connection_has(
            &map(&[("connection", "keep-alive, Upgrade")]),
            "upgrade"
        ));
        assert!(!connection_has(&map(&[("connection", "close")]), "upgrade"));
    }
}
