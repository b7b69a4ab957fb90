//! The framing decision for backend answers (`codec::parse_response`) against a model
//! of RFC 9112 §6.3 written from the RFC, on generated response heads. The model knows
//! nothing of ringlb's code; ringlb's own policy where the RFC leaves a choice is stated
//! as such.

use bytes::BytesMut;
use proptest::prelude::*;
use ringlb::upstream::codec::{parse_response, Framing, Malformed};

/// One header line of a generated head.
#[derive(Debug, Clone)]
enum Field {
    ContentLength(String),
    TransferEncoding(String),
    Connection(String),
    Other,
}

/// A generated response head.
#[derive(Debug, Clone)]
struct Head {
    minor: u8,
    status: u16,
    fields: Vec<Field>,
    /// The answer is to a HEAD request.
    head_request: bool,
}

impl Head {
    fn wire(&self) -> String {
        let mut s = format!("HTTP/1.{} {} X\r\n", self.minor, self.status);
        for f in &self.fields {
            let line = match f {
                Field::ContentLength(v) => format!("Content-Length: {v}"),
                Field::TransferEncoding(v) => format!("Transfer-Encoding: {v}"),
                Field::Connection(v) => format!("Connection: {v}"),
                Field::Other => "X-Other: 1".to_owned(),
            };
            s.push_str(&line);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s
    }

    fn values<'a>(&'a self, pick: impl Fn(&'a Field) -> Option<&'a String>) -> Vec<&'a str> {
        self.fields
            .iter()
            .filter_map(pick)
            .map(String::as_str)
            .collect()
    }

    fn content_lengths(&self) -> Vec<&str> {
        self.values(|f| match f {
            Field::ContentLength(v) => Some(v),
            _ => None,
        })
    }

    fn transfer_encodings(&self) -> Vec<&str> {
        self.values(|f| match f {
            Field::TransferEncoding(v) => Some(v),
            _ => None,
        })
    }

    fn connection_options(&self) -> Vec<String> {
        list_elements(&self.values(|f| match f {
            Field::Connection(v) => Some(v),
            _ => None,
        }))
    }
}

/// What parsing a head decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Refused(Malformed),
    Framed { framing: Framing, keep_alive: bool },
}

/// The elements of a comma-separated list across field lines, empty ones dropped
/// (RFC 9110 §5.6.1: a recipient ignores them), optional whitespace trimmed, lowercase.
fn list_elements(values: &[&str]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(|e| e.trim_matches([' ', '\t']).to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .collect()
}

/// RFC 9110 §8.6: `Content-Length = 1*DIGIT`. A recipient may take a list of one
/// repeated value (`42, 42`), or the same value on several lines, as that value; any
/// other value, or two that differ, is invalid. `None` when invalid.
fn content_length(values: &[&str]) -> Option<u64> {
    let mut seen: Option<u64> = None;
    for v in values {
        for e in v.split(',') {
            let e = e.trim_matches([' ', '\t']);
            if e.is_empty() || !e.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u64 = e.parse().ok()?; // a numeral past u64 is refused, not wrapped
            if seen.is_some_and(|s| s != n) {
                return None;
            }
            seen = Some(n);
        }
    }
    seen
}

/// RFC 9112 §6.3 (message body length of a response), §6.1 (Transfer-Encoding) and
/// §9.3 (persistence), with ringlb's documented choices where the RFC leaves one.
fn model(h: &Head) -> Outcome {
    let lengths = h.content_lengths();
    let te_fields = h.transfer_encodings();
    let te_present = !te_fields.is_empty();
    let codings = list_elements(&te_fields);

    // §6.3 rule 1: an answer to HEAD, a 1xx, 204 or 304 ends at its empty line,
    // whatever its header fields say.
    let bodiless =
        h.head_request || (100..200).contains(&h.status) || h.status == 204 || h.status == 304;

    let framing = if bodiless {
        Framing::Empty
    } else if te_present {
        // Rule 3: Transfer-Encoding overrides Content-Length; such a message "ought to
        // be handled as an error". ringlb's choice: refuse only an invalid length, and
        // otherwise frame by the coding but not reuse the connection (below).
        if !lengths.is_empty() && content_length(&lengths).is_none() {
            return Outcome::Refused(Malformed::ContentLength);
        }
        // Rule 4 frames by chunked when it is the final coding and reads to close
        // otherwise. ringlb's choice: Transfer-Encoding is hop-by-hop, so a coding it
        // would have to pass on undecoded is refused; it takes exactly one `chunked`.
        if codings.len() == 1 && codings[0] == "chunked" {
            Framing::Chunked
        } else {
            return Outcome::Refused(Malformed::TransferCoding);
        }
    } else if lengths.is_empty() {
        // Rule 8: a response with neither reads until the connection closes.
        Framing::Close
    } else {
        // Rules 5 and 6; a proxy answers an invalid length with 502.
        match content_length(&lengths) {
            None => return Outcome::Refused(Malformed::ContentLength),
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
        }
    };

    // §9.3: `close` ends the connection; HTTP/1.1 persists by default, HTTP/1.0 only
    // with `keep-alive`.
    let options = h.connection_options();
    let has = |o: &str| options.iter().any(|x| x == o);
    let mut keep_alive = if has("close") {
        false
    } else if h.minor == 0 {
        has("keep-alive")
    } else {
        true
    };
    // §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing; the
    // connection closes after it. §6.3 rule 3: so does a message with both fields
    // (ringlb: never pooled after doubtful framing).
    if te_present && (h.minor == 0 || !lengths.is_empty()) {
        keep_alive = false;
    }
    // Rule 8: the end of the body is the end of the connection; after 101 the
    // connection speaks another protocol.
    if framing == Framing::Close || h.status == 101 {
        keep_alive = false;
    }
    Outcome::Framed {
        framing,
        keep_alive,
    }
}

/// Where ringlb departs from the model today, each a case the RFC decides otherwise
/// (see the ignored tests below for one input each). The property skips these, so it
/// guards everything else; `cargo test --test framing_rfc9112 -- --ignored` shows them.
fn known_departure(h: &Head) -> Option<&'static str> {
    let bodiless =
        h.head_request || (100..200).contains(&h.status) || h.status == 204 || h.status == 304;
    let lengths = h.content_lengths();
    if bodiless && !lengths.is_empty() && content_length(&lengths).is_none() {
        return Some("an invalid Content-Length on a bodiless answer is refused");
    }
    None
}

fn ringlb(h: &Head) -> Outcome {
    let wire = h.wire();
    let mut buf = BytesMut::from(wire.as_str());
    match parse_response(&mut buf, h.head_request) {
        Ok(Some(head)) => {
            assert!(buf.is_empty(), "the whole head is consumed: {wire:?}");
            Outcome::Framed {
                framing: head.framing,
                keep_alive: head.keep_alive,
            }
        }
        Ok(None) => panic!("a complete head is incomplete: {wire:?}"),
        Err(e) => Outcome::Refused(e),
    }
}

fn content_length_value() -> impl Strategy<Value = String> {
    let element = prop_oneof![
        6 => prop_oneof![Just("0"), Just("3"), Just("5"), Just("005")],
        1 => prop_oneof![
            Just(""),
            Just("x"),
            Just("-1"),
            Just("+5"),
            Just("18446744073709551616"),
        ],
    ];
    let sep = prop_oneof![Just(","), Just(", "), Just(" ,\t")];
    (prop::collection::vec(element, 1..=3), sep).prop_map(|(es, sep)| es.join(sep))
}

fn transfer_encoding_value() -> impl Strategy<Value = String> {
    let element = prop_oneof![
        6 => prop_oneof![Just("chunked"), Just("Chunked"), Just("CHUNKED")],
        3 => prop_oneof![Just("gzip"), Just("identity"), Just("x-custom")],
        2 => prop_oneof![Just(""), Just(" ")],
    ];
    let sep = prop_oneof![Just(","), Just(", "), Just("\t,")];
    (prop::collection::vec(element, 1..=3), sep).prop_map(|(es, sep)| es.join(sep))
}

fn connection_value() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("close"),
        Just("Close"),
        Just("keep-alive"),
        Just("Keep-Alive"),
        Just("upgrade"),
        Just(""),
    ];
    prop::collection::vec(token, 1..=3).prop_map(|ts| ts.join(", "))
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        3 => content_length_value().prop_map(Field::ContentLength),
        3 => transfer_encoding_value().prop_map(Field::TransferEncoding),
        2 => connection_value().prop_map(Field::Connection),
        1 => Just(Field::Other),
    ]
}

fn head() -> impl Strategy<Value = Head> {
    let status = prop_oneof![
        3 => prop::sample::select(vec![100u16, 101, 103, 204, 304]),
        4 => prop::sample::select(vec![200u16, 201, 205, 206, 301, 404, 500, 502]),
        1 => 100u16..600,
    ];
    (
        0u8..=1,
        status,
        prop::collection::vec(field(), 0..=5),
        any::<bool>(),
    )
        .prop_map(|(minor, status, fields, head_request)| Head {
            minor,
            status,
            fields,
            head_request,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn framing_agrees_with_rfc_9112(h in head()) {
        if known_departure(&h).is_none() {
            prop_assert_eq!(ringlb(&h), model(&h), "{:?}", h.wire());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// The same property with no case skipped: fails while a departure remains.
    #[test]
    #[ignore = "ringlb departs from RFC 9112 in the cases known_departure names"]
    fn framing_agrees_with_rfc_9112_everywhere(h in head()) {
        prop_assert_eq!(ringlb(&h), model(&h), "{:?}", h.wire());
    }
}

fn parsed(wire: &str, head_request: bool) -> Outcome {
    let mut buf = BytesMut::from(wire);
    match parse_response(&mut buf, head_request) {
        Ok(Some(head)) => Outcome::Framed {
            framing: head.framing,
            keep_alive: head.keep_alive,
        },
        Ok(None) => panic!("incomplete: {wire:?}"),
        Err(e) => Outcome::Refused(e),
    }
}

/// The model on a few heads worked out by hand from the RFC, so a wrong model cannot
/// make the property pass.
#[test]
fn the_model_decides_known_heads() {
    let h = |minor, status, fields: Vec<Field>, head_request| Head {
        minor,
        status,
        fields,
        head_request,
    };
    use Field::*;
    let framed = |framing, keep_alive| Outcome::Framed {
        framing,
        keep_alive,
    };
    let cases = [
        (h(1, 200, vec![], false), framed(Framing::Close, false)),
        (
            h(1, 200, vec![ContentLength("5, 5".into())], false),
            framed(Framing::Length(5), true),
        ),
        (
            h(
                1,
                200,
                vec![ContentLength("5".into()), ContentLength("3".into())],
                false,
            ),
            Outcome::Refused(Malformed::ContentLength),
        ),
        (
            h(
                1,
                200,
                vec![TransferEncoding("gzip, chunked".into())],
                false,
            ),
            Outcome::Refused(Malformed::TransferCoding),
        ),
        (
            h(
                1,
                200,
                vec![
                    TransferEncoding("chunked".into()),
                    TransferEncoding("chunked".into()),
                ],
                false,
            ),
            Outcome::Refused(Malformed::TransferCoding),
        ),
        (
            h(
                1,
                200,
                vec![
                    TransferEncoding(",Chunked,".into()),
                    ContentLength("9".into()),
                ],
                false,
            ),
            framed(Framing::Chunked, false),
        ),
        (
            h(
                0,
                200,
                vec![
                    Connection("keep-alive".into()),
                    TransferEncoding("chunked".into()),
                ],
                false,
            ),
            framed(Framing::Chunked, false),
        ),
        (
            h(
                0,
                200,
                vec![Connection("Keep-Alive".into()), ContentLength("3".into())],
                false,
            ),
            framed(Framing::Length(3), true),
        ),
        (
            h(0, 200, vec![ContentLength("3".into())], false),
            framed(Framing::Length(3), false),
        ),
        (
            h(1, 200, vec![TransferEncoding("gzip".into())], true),
            framed(Framing::Empty, true),
        ),
        (
            h(1, 304, vec![ContentLength("9".into())], false),
            framed(Framing::Empty, true),
        ),
        (h(1, 101, vec![], false), framed(Framing::Empty, false)),
        (
            h(
                1,
                200,
                vec![
                    Connection("upgrade, close".into()),
                    ContentLength("0".into()),
                ],
                false,
            ),
            framed(Framing::Empty, false),
        ),
    ];
    for (head, expected) in cases {
        assert_eq!(model(&head), expected, "{:?}", head.wire());
        assert_eq!(ringlb(&head), expected, "{:?}", head.wire());
    }
}

#[test]
#[ignore = "departure: RFC 9112 §6.3 rule 1 frames HEAD/1xx/204/304 answers as empty \
            whatever their fields say; ringlb refuses an invalid Content-Length on them"]
fn an_invalid_length_on_a_bodiless_answer_is_not_a_framing_error() {
    let wire = "HTTP/1.1 304 Not Modified\r\nContent-Length: 1, 2\r\n\r\n";
    assert_eq!(
        parsed(wire, false),
        Outcome::Framed {
            framing: Framing::Empty,
            keep_alive: true
        }
    );
}

#[test]
fn an_empty_transfer_encoding_is_not_ignored() {
    let wire = "HTTP/1.1 200 OK\r\nTransfer-Encoding: ,\r\nContent-Length: 5\r\n\r\n";
    assert_eq!(
        parsed(wire, false),
        Outcome::Refused(Malformed::TransferCoding)
    );
}

#[test]
fn http_1_0_close_wins_over_keep_alive() {
    let wire = "HTTP/1.0 200 OK\r\nConnection: close, keep-alive\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(
        parsed(wire, false),
        Outcome::Framed {
            framing: Framing::Empty,
            keep_alive: false
        }
    );
}
