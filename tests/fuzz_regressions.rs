//! Inputs the fuzz targets in `fuzz/` found or start from, replayed through the same
//! public APIs on stable `cargo test`: the seed corpora in `fuzz/corpus/`, and one
//! test per finding with its exact input. No fuzzing here.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use bytes::BytesMut;
use http::Request;
use ringlb::config::{self, ConfigError, KeySource};
use ringlb::key;
use ringlb::upstream::codec::{self, Chunked, Decoded, Framing};

/// The committed seeds of one fuzz target, as (file name, bytes).
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "fuzz", "corpus", target]
        .iter()
        .collect();
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("a directory entry").path();
            let name = path.file_name().expect("a file").to_string_lossy().into();
            (name, fs::read(&path).expect("a readable seed"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
}

/// A chunked body decoded with reads of `step` bytes: (body, bytes after it), or
/// `None` when malformed or short.
fn decode(mut wire: &[u8], step: usize) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut dec = Chunked::default();
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    loop {
        match dec.decode(&mut buf).ok()? {
            Decoded::Data(d) => body.extend_from_slice(&d),
            Decoded::Done => {
                let mut rest = buf.to_vec();
                rest.extend_from_slice(wire);
                return Some((body, rest));
            }
            Decoded::NeedMore if wire.is_empty() => return None,
            Decoded::NeedMore => {
                let n = step.min(wire.len());
                buf.extend_from_slice(&wire[..n]);
                wire = &wire[n..];
            }
        }
    }
}

#[test]
fn response_seeds_frame_as_the_fuzz_target_expects() {
    for (name, data) in corpus("response") {
        // Byte 0 holds the fuzz target's flags; bit 0 marks an answer to HEAD.
        let (flags, wire) = data.split_first().expect("a flags byte");
        let mut buf = BytesMut::from(wire);
        let Ok(Some(head)) = codec::parse_response(&mut buf, flags & 1 == 1) else {
            continue;
        };
        if head.framing == Framing::Chunked {
            let whole = decode(&buf, buf.len());
            for step in 1..8 {
                assert_eq!(decode(&buf, step), whole, "{name}: reads of {step}");
            }
        }
    }
}

#[test]
fn config_seeds_load_or_say_where() {
    for (name, data) in corpus("config") {
        let text = String::from_utf8(data).expect("UTF-8 seeds");
        match config::from_str(&text, "fuzz.yaml") {
            Ok(_) => {}
            Err(ConfigError::Invalid(ds)) => {
                assert!(!ds.is_empty(), "{name}");
                for d in ds {
                    assert!(d.to_string().starts_with("fuzz.yaml:"), "{name}: {d}");
                }
            }
            Err(e) => panic!("{name}: from_str read a file: {e}"),
        }
    }
}

#[test]
fn key_seeds_hash_without_panic() {
    // The fuzz target's input: sources, client address, target, then header lines.
    for (name, data) in corpus("key") {
        let text = String::from_utf8_lossy(&data);
        let mut lines = text.lines();
        let sources: Vec<KeySource> = lines
            .next()
            .unwrap_or_default()
            .split(',')
            .filter_map(|s| KeySource::parse(s.trim()).ok())
            .collect();
        let peer = lines
            .next()
            .and_then(|l| l.parse().ok())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let mut req = Request::builder().uri(lines.next().unwrap_or("/"));
        for l in lines {
            if let Some((n, v)) = l.split_once(':') {
                req = req.header(n, v.trim());
            }
        }
        let Ok(req) = req.body(()) else {
            continue;
        };
        let parts = req.into_parts().0;
        let h = key::hash(&parts, peer, &sources);
        assert_eq!(h, key::hash(&parts, peer, &sources), "{name}");
    }
}

/// Found by the `config` target (its first, stricter harness): serde_yaml echoes an
/// unknown key whole, so a key that spans lines puts line breaks inside one sentence
/// and the error no longer reads as one `file:line:col: message` per line.
#[test]
fn an_unknown_multiline_key_stays_one_line_of_error() {
    let text = "listeners: [{bind: \"[::1]:8080\"}]\nbackends: [{addre\r\r\r//m_read: 25h}]\n";
    let Err(ConfigError::Invalid(ds)) = config::from_str(text, "fuzz.yaml") else {
        panic!("an unknown field is refused");
    };
    for d in ds {
        assert!(!d.message.contains(['\n', '\r']), "{d}");
    }
}
