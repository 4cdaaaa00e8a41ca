//! Property tests of what the registry parses from clients: repository names,
//! tags, digests, upload ids and the byte ranges of `Range` and `Content-Range`.
//! Each parser must refuse anything outside its grammar, accept everything in it,
//! and never panic.

use std::sync::LazyLock;

use berth_registry::api::ranges::{content_range, range};
use berth_registry::digest::{Algorithm, Digest};
use berth_registry::names::{RepoName, Tag, UploadId};
use berth_registry::storage::Chunk;
use proptest::prelude::*;
use regex::Regex;

/// The distribution-spec's grammars, anchored.
static SPEC_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$").unwrap());
static SPEC_TAG: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").unwrap());
static SPEC_DIGEST: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$").unwrap());
static CANONICAL_UUID: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$").unwrap());

const CASES: u32 = 4096;

/// Arbitrary text, and text made mostly of the characters the grammar is about
/// (so that near misses are common).
fn text(alphabet: &'static str, max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::string::string_regex(&format!("[{alphabet}]{{0,{max}}}")).unwrap(),
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

/// A name component as the grammar builds it: alphanumerics joined by separators.
fn component() -> impl Strategy<Value = String> {
    let alnum = "[a-z0-9]{1,8}";
    let separator = prop_oneof![Just(".".to_owned()), Just("_".to_owned()), Just("__".to_owned()), "-{1,3}"];
    (alnum, proptest::collection::vec((separator, alnum), 0..4)).prop_map(|(first, rest)| {
        rest.into_iter().fold(first, |mut s, (sep, part)| {
            s.push_str(&sep);
            s.push_str(&part);
            s
        })
    })
}

fn valid_name() -> impl Strategy<Value = String> {
    proptest::collection::vec(component(), 1..6).prop_map(|c| c.join("/"))
}

fn hex(len: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[0-9a-f]{{{len}}}")).unwrap()
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    // ------------------------------------------------------------ RepoName

    #[test]
    fn repo_name_accepts_only_the_grammar(s in text("a-z0-9._/-", 300)) {
        if let Ok(name) = s.parse::<RepoName>() {
            prop_assert_eq!(name.as_str(), s.as_str());
            prop_assert!(SPEC_NAME.is_match(&s), "accepted outside the grammar: {:?}", s);
            prop_assert!(s.len() <= 255, "accepted a name of {} bytes", s.len());
            prop_assert!(!s.contains(".."), "accepted {:?}", s);
            for c in s.split('/') {
                prop_assert!(!c.is_empty() && !c.starts_with('.') && !c.starts_with('_'), "component {:?} of {:?}", c, s);
            }
        } else {
            prop_assert!(!SPEC_NAME.is_match(&s) || s.len() > 255, "refused a valid name: {:?}", s);
        }
    }

    #[test]
    fn repo_name_accepts_generated_names(s in valid_name()) {
        prop_assert!(SPEC_NAME.is_match(&s), "generator made {:?}", s);
        let parsed = s.parse::<RepoName>();
        if s.len() <= 255 {
            let name = parsed.map_err(|e| TestCaseError::fail(format!("{s:?} refused: {e}")))?;
            prop_assert_eq!(name.to_string(), s);
        } else {
            prop_assert!(parsed.is_err(), "accepted {} bytes", s.len());
        }
    }

    #[test]
    fn repo_name_length_limit(c in component(), n in 1usize..40) {
        let s = vec![c; n].join("/");
        prop_assert_eq!(s.parse::<RepoName>().is_ok(), s.len() <= 255, "{} bytes", s.len());
    }

    // ------------------------------------------------------------ Tag

    #[test]
    fn tag_accepts_the_grammar(s in "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}") {
        let t = s.parse::<Tag>().map_err(|e| TestCaseError::fail(format!("{s:?} refused: {e}")))?;
        prop_assert_eq!(t.as_str(), s.as_str());
        prop_assert_eq!(t.to_string(), s);
    }

    #[test]
    fn tag_refuses_everything_else(s in text("a-zA-Z0-9._:/+-", 140)) {
        prop_assert_eq!(s.parse::<Tag>().is_ok(), SPEC_TAG.is_match(&s), "{:?}", s);
    }

    #[test]
    fn tag_too_long_or_bad_start(body in "[a-zA-Z0-9._-]{128,140}", first in "[.-]", rest in "[a-zA-Z0-9._-]{0,20}") {
        prop_assert!(format!("a{body}").parse::<Tag>().is_err(), "accepted {} characters", body.len() + 1);
        let s = format!("{first}{rest}");
        prop_assert!(s.parse::<Tag>().is_err(), "accepted {:?}", s);
    }

    // ------------------------------------------------------------ Digest

    #[test]
    fn digest_round_trips(h256 in hex(64), h512 in hex(128)) {
        for (s, algorithm) in [(format!("sha256:{h256}"), Algorithm::Sha256), (format!("sha512:{h512}"), Algorithm::Sha512)] {
            let d = s.parse::<Digest>().map_err(|e| TestCaseError::fail(format!("{s:?} refused: {e}")))?;
            prop_assert_eq!(d.algorithm(), algorithm);
            prop_assert_eq!(d.to_string(), s.clone());
            prop_assert_eq!(d.to_string().parse::<Digest>().ok(), Some(d));
        }
    }

    #[test]
    fn digest_of_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let d = Digest::of(algorithm, &bytes);
            prop_assert_eq!(d.to_string().parse::<Digest>().ok(), Some(d));
        }
    }

    #[test]
    fn digest_refuses_wrong_lengths(len in 0usize..200, algorithm in prop_oneof![Just("sha256"), Just("sha512")]) {
        let right = if algorithm == "sha256" { 64 } else { 128 };
        let s = format!("{algorithm}:{}", "0123456789abcdef".repeat(13).chars().take(len).collect::<String>());
        prop_assert_eq!(s.parse::<Digest>().is_ok(), len == right, "{:?}", s);
    }

    #[test]
    fn digest_refuses_upper_case(h in "[0-9a-f]{63}", upper in "[A-F]", at in 0usize..64) {
        let mut hex = h;
        hex.insert_str(at.min(hex.len()), &upper);
        let s = format!("sha256:{hex}");
        prop_assert!(s.parse::<Digest>().is_err(), "accepted {:?}", s);
        let s = format!("SHA256:{}", hex.to_lowercase());
        prop_assert!(s.parse::<Digest>().is_err(), "accepted {:?}", s);
    }

    #[test]
    fn digest_refuses_unknown_algorithms(algorithm in "[a-z0-9+._-]{1,12}", h in hex(64), h2 in hex(32)) {
        prop_assume!(algorithm != "sha256" && algorithm != "sha512");
        for s in [format!("{algorithm}:{h}"), format!("{algorithm}:{h}{h}"), format!("{algorithm}:{h2}")] {
            prop_assert!(s.parse::<Digest>().is_err(), "accepted {:?}", s);
        }
    }

    #[test]
    fn digest_accepts_only_the_grammar(s in text("sha2560-9a-fA-F:+._-", 140)) {
        if let Ok(d) = s.parse::<Digest>() {
            prop_assert!(SPEC_DIGEST.is_match(&s), "accepted {:?}", s);
            prop_assert_eq!(d.to_string(), s);
        }
    }

    #[test]
    fn digest_of_near_misses(h in hex(64), junk in "[^0-9a-f]") {
        for s in [format!("sha256:{h}{junk}"), format!("{junk}sha256:{h}"), format!("sha256:{}{junk}", &h[1..]), format!("sha256::{h}"), format!("sha256:{h}:")] {
            prop_assert!(s.parse::<Digest>().is_err(), "accepted {:?}", s);
        }
    }

    // ------------------------------------------------------------ UploadId

    #[test]
    fn upload_id_round_trips(bits in any::<u128>()) {
        let s = uuid::Uuid::from_u128(bits).hyphenated().to_string();
        let id = s.parse::<UploadId>().map_err(|e| TestCaseError::fail(format!("{s:?} refused: {e}")))?;
        prop_assert_eq!(id.to_string(), s);
    }

    #[test]
    fn upload_id_accepts_only_canonical(s in text("0-9a-fA-F{}:-", 48)) {
        if let Ok(id) = s.parse::<UploadId>() {
            prop_assert!(CANONICAL_UUID.is_match(&s), "accepted {:?}", s);
            prop_assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn upload_id_refuses_other_forms(bits in any::<u128>()) {
        let u = uuid::Uuid::from_u128(bits);
        let canonical = u.hyphenated().to_string();
        let mut forms = vec![
            u.simple().to_string(),
            u.braced().to_string(),
            u.urn().to_string(),
            format!(" {canonical}"),
            format!("{canonical}\n"),
            format!("{canonical}/"),
            canonical[1..].to_owned(),
        ];
        if canonical.bytes().any(|b| b.is_ascii_alphabetic()) {
            forms.push(canonical.to_uppercase());
        }
        for s in forms {
            prop_assert!(s.parse::<UploadId>().is_err(), "accepted {:?}", s);
        }
    }

    // ------------------------------------------------------------ Range

    #[test]
    fn range_never_panics_and_stays_inside(v in text("bytes=0-9, -", 60), size in size()) {
        if let Ok(Some(r)) = range(Some(&v), size) {
            prop_assert!(r.start < r.end && r.end <= size, "{:?} of {} gave {:?}", v, size, r);
        }
    }

    #[test]
    fn range_of_structured_values(v in range_value(), size in size()) {
        if let Ok(Some(r)) = range(Some(&v), size) {
            prop_assert!(r.start < r.end && r.end <= size, "{:?} of {} gave {:?}", v, size, r);
        }
    }

    #[test]
    fn range_first_last((size, a, b) in (1u64..=u64::MAX).prop_flat_map(|size| (Just(size), 0..size)).prop_flat_map(|(size, a)| (Just(size), Just(a), a..size))) {
        let v = format!("bytes={a}-{b}");
        let got = range(Some(&v), size).map_err(|e| TestCaseError::fail(format!("{v} of {size}: {e}")))?;
        prop_assert_eq!(got, Some(a..b + 1), "{} of {}", v, size);
    }

    #[test]
    fn range_first_only(size in size(), a in any::<u64>()) {
        let v = format!("bytes={a}-");
        match range(Some(&v), size) {
            Ok(got) => prop_assert!(a < size && got == Some(a..size), "{} of {}: {:?}", v, size, got),
            Err(_) => prop_assert!(a >= size, "{} of {} refused", v, size),
        }
    }

    #[test]
    fn range_suffix(size in size(), n in 1u64..=u64::MAX) {
        let v = format!("bytes=-{n}");
        let got = range(Some(&v), size);
        if size == 0 {
            prop_assert!(got.is_err(), "{} of an empty blob: {:?}", v, got);
        } else {
            let got = got.map_err(|e| TestCaseError::fail(format!("{v} of {size}: {e}")))?;
            prop_assert_eq!(got, Some(size - n.min(size)..size), "{} of {}", v, size);
        }
    }

    #[test]
    fn range_last_before_first(size in size(), a in 1u64..=u64::MAX, d in 1u64..=u64::MAX) {
        let b = a.saturating_sub(d);
        prop_assume!(b < a);
        let v = format!("bytes={a}-{b}");
        prop_assert!(range(Some(&v), size).is_err(), "{} of {}", v, size);
    }

    // ------------------------------------------------------------ Content-Range

    #[test]
    fn content_range_never_panics(v in text("bytes=/0-9 -", 80), length in proptest::option::of(any::<u64>())) {
        if let Ok(Chunk { start, len }) = content_range(&v, length) {
            let (start, len) = (start.expect("a start"), len.expect("a length"));
            prop_assert!(len >= 1, "{:?}: empty chunk", v);
            prop_assert!(start.checked_add(len - 1).is_some(), "{:?}: end overflows", v);
            if let Some(l) = length {
                prop_assert_eq!(l, len, "{:?} with Content-Length {}", v, l);
            }
        }
    }

    #[test]
    fn content_range_of_structured_values(
        (a, b) in numbers(),
        form in 0usize..5,
        total in any::<u64>(),
        length in proptest::option::of(prop_oneof![any::<u64>(), Just(0u64), Just(1u64)]),
    ) {
        let v = match form {
            0 => format!("{a}-{b}"),
            1 => format!("bytes {a}-{b}/{total}"),
            2 => format!("bytes={a}-{b}"),
            3 => format!("bytes {a}-{b}/*"),
            _ => format!(" {a} - {b} "),
        };
        let expected_len = b.checked_sub(a).and_then(|n| n.checked_add(1));
        let length = length.map(|l| if l == 1 { expected_len.unwrap_or(1) } else { l });
        match content_range(&v, length) {
            Ok(Chunk { start, len }) => {
                let (start, len) = (start.expect("a start"), len.expect("a length"));
                prop_assert_eq!(start, a, "{:?}", v);
                prop_assert_eq!(Some(len), expected_len, "{:?}", v);
                prop_assert_eq!(start.checked_add(len - 1), Some(b), "{:?}: start + len - 1 != end", v);
                prop_assert!(length.is_none_or(|l| l == len), "{:?} with Content-Length {:?}", v, length);
            }
            Err(_) => prop_assert!(
                expected_len.is_none() || length.is_some_and(|l| Some(l) != expected_len),
                "{:?} with Content-Length {:?} refused", v, length
            ),
        }
    }
}

/// Blob sizes: small ones, where every range shape occurs, and the extremes.
fn size() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..50, Just(0), Just(u64::MAX), Just(u64::MAX - 1), any::<u64>()]
}

/// Numbers as range bounds: small, at the edges of u64, and anything.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..60, Just(u64::MAX), Just(u64::MAX - 1), (u64::MAX - 60)..=u64::MAX, any::<u64>()]
}

fn numbers() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![(number(), number()), number().prop_flat_map(|a| (Just(a), a..=u64::MAX))]
}

/// `Range` values: well formed, and with the mistakes clients make.
fn range_value() -> impl Strategy<Value = String> {
    (number(), number(), 0usize..10, "[ ,;a-z=0-9-]{0,4}").prop_map(|(a, b, form, junk)| match form {
        0 => format!("bytes={a}-{b}"),
        1 => format!("bytes={a}-"),
        2 => format!("bytes=-{b}"),
        3 => format!("bytes={a}-{b},{b}-{a}"),
        4 => format!(" bytes= {a} - {b} "),
        5 => format!("bytes={a}-{b}{junk}"),
        6 => format!("{junk}bytes={a}-{b}"),
        7 => format!("bytes={a}{junk}"),
        8 => format!("bytes=-{b}-{a}"),
        _ => format!("bytes={a}99999999999999999999-{b}"),
    })
}

#[test]
fn range_absent_or_not_bytes() {
    for size in [0, 1, 100, u64::MAX] {
        assert!(matches!(range(None, size), Ok(None)));
        assert!(matches!(range(Some("items=0-1"), size), Ok(None)));
        assert!(matches!(range(Some(""), size), Ok(None)));
    }
    assert_eq!(range(Some("bytes=0-18446744073709551615"), u64::MAX).unwrap(), Some(0..u64::MAX));
    assert_eq!(range(Some("bytes=-18446744073709551615"), 7).unwrap(), Some(0..7));
}

#[test]
fn content_range_huge_numbers() {
    assert!(content_range("0-18446744073709551615", None).is_err());
    assert!(content_range("0-18446744073709551616", None).is_err());
    assert!(content_range("18446744073709551615-18446744073709551615", None).is_ok());
    assert!(content_range("1-18446744073709551615", Some(u64::MAX)).is_ok());
    assert!(content_range("99999999999999999999999-1", None).is_err());
}
