//! What a client presents in its `Authorization` header.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Longest `Authorization` value looked at; Kubernetes tokens are a few KiB.
const MAX_LEN: usize = 16 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials, or an empty Basic pair (`Og==`, which some clients send
    /// after a failed login).
    None,
    Basic {
        user: String,
        password: String,
    },
    Bearer(String),
}

/// Why a header could not be read; the client gets 401 either way.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed Authorization header: {0}")]
pub struct Malformed(&'static str);

impl Credentials {
    pub fn parse(header: Option<&str>) -> Result<Credentials, Malformed> {
        let Some(value) = header else {
            return Ok(Credentials::None);
        };
        if value.len() > MAX_LEN {
            return Err(Malformed("too long"));
        }
        let (scheme, rest) = value.trim().split_once(' ').ok_or(Malformed("no scheme"))?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            basic(rest)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            if rest.is_empty() || rest.contains(char::is_whitespace) {
                return Err(Malformed("bearer token"));
            }
            Ok(Credentials::Bearer(rest.to_owned()))
        } else {
            Err(Malformed("unknown scheme"))
        }
    }
}

fn basic(encoded: &str) -> Result<Credentials, Malformed> {
    let decoded = STANDARD.decode(encoded).map_err(|_| Malformed("basic credentials are not base64"))?;
    let text = String::from_utf8(decoded).map_err(|_| Malformed("basic credentials are not UTF-8"))?;
    let (user, password) = text.split_once(':').ok_or(Malformed("basic credentials without ':'"))?;
    if user.is_empty() && password.is_empty() {
        return Ok(Credentials::None);
    }
    Ok(Credentials::Basic { user: user.to_owned(), password: password.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    #[test]
    fn schemes() {
        assert_eq!(Credentials::parse(None), Ok(Credentials::None));
        assert_eq!(Credentials::parse(Some("Basic Og==")), Ok(Credentials::None));
        assert_eq!(
            Credentials::parse(Some(&format!("basic {}", b64("al:ice:pw")))),
            Ok(Credentials::Basic { user: "al".into(), password: "ice:pw".into() })
        );
        assert_eq!(Credentials::parse(Some("Bearer abc.def")), Ok(Credentials::Bearer("abc.def".into())));
        for bad in ["Basic", "Basic !!", "Digest x", "Bearer ", "Bearer a b", &format!("Basic {}", b64("nocolon"))] {
            assert!(Credentials::parse(Some(bad)).is_err(), "{bad:?} accepted");
        }
        assert!(Credentials::parse(Some(&format!("Bearer {}", "a".repeat(MAX_LEN)))).is_err());
    }
}
