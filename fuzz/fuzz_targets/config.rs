//! Fuzzes the config loader (`config::from_str`) with arbitrary UTF-8: it gives a
//! config or located sentences, never a panic. Checks invariants only.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::config::ConfigError;

const ORIGIN: &str = "fuzz.yaml";

fuzz_target!(|text: &str| {
    let err = match ringlb::config::from_str(text, ORIGIN) {
        Ok(_) => return,
        Err(ConfigError::Invalid(diagnostics)) => diagnostics,
        Err(other) => panic!("from_str reads no file, yet: {other}"),
    };
    assert!(!err.is_empty(), "a refusal says why");
    // An upper bound on the lines YAML counts: it breaks lines at CR, LF, NEL, LS and
    // PS, and may point one past the end (at end of input).
    let lines = 1 + text
        .chars()
        .filter(|c| matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}'))
        .count();
    for d in &err {
        let shown = d.to_string();
        assert_eq!(d.origin, ORIGIN, "{shown:?}");
        assert!(shown.starts_with("fuzz.yaml:"), "{shown:?}");
        assert!(!d.message.trim().is_empty(), "no message: {shown:?}");
        if let Some((line, col)) = d.position {
            assert!(line >= 1 && col >= 1, "positions are 1-based: {shown:?}");
            assert!(line <= lines + 1, "line {line} of {lines}: {shown:?}");
        }
    }
});
