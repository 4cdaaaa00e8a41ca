//! `WWW-Authenticate` challenges from an upstream registry: `Basic realm=...`
//! or Docker's token flow, `Bearer realm="https://auth/token",service="...",scope="..."`.

use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    /// Where to ask for a token, and the parameters to ask with.
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// The first challenge of a scheme we speak, or `None`.
pub fn parse(header: &str) -> Option<Challenge> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => {
            let mut params = params(rest);
            let realm = params.remove("realm").filter(|r| r.starts_with("https://") || r.starts_with("http://"))?;
            Some(Challenge::Bearer { realm, service: params.remove("service") })
        }
        _ => None,
    }
}

/// `key="value", key=value` pairs; quoted values may hold commas and `\"`.
fn params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect::<String>().trim().to_owned();
        }
        out.insert(key.trim().to_ascii_lowercase(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let hub = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#;
        assert_eq!(
            parse(hub),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            })
        );
        assert_eq!(parse(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(
            parse("bearer realm=http://10.0.0.1/t, service = x"),
            Some(Challenge::Bearer { realm: "http://10.0.0.1/t".into(), service: Some("x".into()) })
        );
        assert_eq!(parse(r#"Bearer realm="file:///etc/passwd""#), None, "only http(s) realms");
        assert_eq!(parse(r#"Bearer service="x""#), None);
        assert_eq!(parse("Negotiate abc"), None);
        assert_eq!(params(r#"a="x\"y,z", b=c"#).get("a").map(String::as_str), Some("x\"y,z"));
    }
}
