//! Repository names, tags and manifest references, validated as the
//! distribution-spec grammar says. A validated name is safe to use as a path below
//! the storage root: its components never start with `.` or `_`.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use regex::Regex;

use crate::digest::Digest;
use crate::error::Error;

/// Distribution refuses longer names; the full reference must stay usable by clients.
pub const MAX_NAME_LEN: usize = 255;

static NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$").unwrap());
static TAG: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").unwrap());

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RepoName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if s.len() > MAX_NAME_LEN {
            return Err(Error::NameInvalid(format!("repository name longer than {MAX_NAME_LEN} characters")));
        }
        if !NAME.is_match(s) {
            return Err(Error::NameInvalid(format!(
                "{s:?} is not a repository name: lower-case path components of letters and digits \
                 separated by '.', '_', '__' or '-'"
            )));
        }
        Ok(RepoName(s.to_owned()))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if TAG.is_match(s) {
            Ok(Tag(s.to_owned()))
        } else {
            Err(Error::TagInvalid(format!(
                "{s:?} is not a tag: up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
            )))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What follows `/manifests/`: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        if s.contains(':') { s.parse().map(Reference::Digest) } else { s.parse().map(Reference::Tag) }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// An upload session's id: a UUID in its hyphenated lower-case form, so it is
/// safe as a file name and a URL segment. Anything else is an unknown session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UploadId(uuid::Uuid);

impl UploadId {
    pub fn random() -> Self {
        UploadId(uuid::Uuid::new_v4())
    }
}

impl FromStr for UploadId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match uuid::Uuid::try_parse(s) {
            Ok(u) if u.hyphenated().to_string() == s => Ok(UploadId(u)),
            _ => Err(Error::UploadUnknown),
        }
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "library/ubuntu", "a.b/c_d/e__f/g--h", "0/1/2"] {
            assert!(good.parse::<RepoName>().is_ok(), "{good} refused");
        }
        for bad in ["", "A", "a/", "/a", "a//b", "..", "a/../b", "a/.b", "_a", "a__", "a...b", "a b", "a%2e"] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad} accepted");
        }
        assert!("a".repeat(256).parse::<RepoName>().is_err());
    }

    #[test]
    fn tags() {
        assert!("v1.0_rc-1".parse::<Tag>().is_ok());
        assert!("_x".parse::<Tag>().is_ok());
        for bad in ["", ".x", "-x", "a/b", "a:b", &"x".repeat(129)] {
            assert!(bad.parse::<Tag>().is_err(), "{bad} accepted");
        }
    }
}
