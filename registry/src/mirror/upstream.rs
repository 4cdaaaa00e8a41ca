//! The client of one upstream registry: manifest GET/HEAD and blob GET, with
//! Basic credentials or Docker's Bearer token flow, the mirror's CA, and
//! explicit time limits so a dead upstream is an error, never a hang.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;
use tracing::Instrument;

use super::challenge::{self, Challenge};
use super::{FetchError, SetupError};
use crate::config::MirrorConfig;
use crate::error_chain::describe;

/// Time to open a connection (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the next bytes of a response, headers included.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Whole token and manifest exchanges.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Tokens kept at once (one per upstream repository).
const MAX_TOKENS: usize = 4096;
/// A token's life when the token server does not say.
const DEFAULT_TOKEN_SECS: u64 = 60;

pub struct Upstream {
    client: reqwest::Client,
    base: String,
    credentials: Option<(String, String)>,
    auth: Mutex<AuthState>,
}

#[derive(Default)]
struct AuthState {
    /// The upstream asked for Basic credentials once: send them up front.
    basic: bool,
    /// Bearer tokens by repository, with when they stop being used.
    tokens: HashMap<String, (String, Instant)>,
}

/// One request to the upstream.
struct Call<'a> {
    method: Method,
    repo: &'a str,
    path: String,
    accept: Option<&'a str>,
    /// With a deadline for the whole exchange (blob bodies only have the read timeout).
    bounded: bool,
}

/// A manifest as the upstream answered it.
pub struct UpstreamManifest {
    pub media_type: String,
    /// `Docker-Content-Digest`, as sent (checked by the caller).
    pub digest: Option<String>,
    /// The body (empty for a HEAD).
    pub bytes: bytes::Bytes,
}

#[derive(Deserialize)]
struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

fn read_secret(path: &std::path::Path) -> Result<String, SetupError> {
    let text = std::fs::read_to_string(path).map_err(|e| SetupError::File(path.to_owned(), e))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

impl Upstream {
    pub fn new(config: &MirrorConfig) -> Result<Self, SetupError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("berth-registry/", env!("CARGO_PKG_VERSION")))
            // Blob GETs are redirected to CDNs; reqwest drops credentials
            // when the host changes.
            .redirect(reqwest::redirect::Policy::limited(5));
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| SetupError::File(ca.clone(), e))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| SetupError::Ca(ca.clone(), e.to_string()))?;
            if certs.is_empty() {
                return Err(SetupError::Ca(ca.clone(), "no certificate in the file".into()));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder.build().map_err(|e| SetupError::Client(e.to_string()))?;
        let credentials = match (&config.username_file, &config.password_file) {
            (Some(u), Some(p)) => Some((read_secret(u)?, read_secret(p)?)),
            _ => None,
        };
        Ok(Upstream { client, base: config.url.trim_end_matches('/').to_owned(), credentials, auth: Mutex::default() })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET` (or `HEAD`) of a manifest; `None` when the upstream does not have it.
    pub async fn manifest(
        &self,
        repo: &str,
        reference: &str,
        accept: &str,
        head: bool,
        max_size: u64,
    ) -> Result<Option<UpstreamManifest>, FetchError> {
        let method = if head { Method::HEAD } else { Method::GET };
        let path = format!("/v2/{repo}/manifests/{reference}");
        let call = Call { method, repo, path, accept: Some(accept), bounded: true };
        let Some(response) = self.send(call).await? else {
            return Ok(None);
        };
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let media_type = header(CONTENT_TYPE.as_str()).unwrap_or_default();
        let digest = header("docker-content-digest");
        if response.content_length().is_some_and(|l| !head && l > max_size) {
            return Err(FetchError::TooLarge(max_size));
        }
        let bytes = if head { bytes::Bytes::new() } else { read_limited(response, max_size).await? };
        Ok(Some(UpstreamManifest { media_type, digest, bytes }))
    }

    /// `GET` of a blob, its body still to be read; `None` when the upstream does
    /// not have it.
    pub async fn blob(&self, repo: &str, digest: &str) -> Result<Option<Response>, FetchError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        self.send(Call { method: Method::GET, repo, path, accept: None, bounded: false }).await
    }

    /// Whether the upstream serves a blob in `repo` (a HEAD: no body moves).
    pub async fn has_blob(&self, repo: &str, digest: &str) -> Result<bool, FetchError> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let found = self.send(Call { method: Method::HEAD, repo, path, accept: None, bounded: true }).await?;
        Ok(found.is_some())
    }

    /// Sends a request with what the upstream asked for last time; on a 401,
    /// answers its challenge once and sends again. When the request that
    /// caused it is traced, so is this exchange, as a client span whose trace
    /// the upstream is told of (`traceparent`).
    async fn send(&self, call: Call<'_>) -> Result<Option<Response>, FetchError> {
        let Call { method, repo, path, .. } = &call;
        let span = if tracing::Span::current().is_disabled() {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "upstream",
                otel.name = %format_args!("{method} upstream"),
                otel.kind = "client",
                http.request.method = %method,
                url.full = %format_args!("{}{path}", self.base),
                repository = repo,
                http.response.status_code = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
                error.type = tracing::field::Empty,
            )
        };
        let answer = self.exchange(&call).instrument(span.clone()).await;
        if let Err(e) = &answer {
            span.record("otel.status_code", "ERROR").record("error.type", e.kind());
        }
        answer
    }

    async fn exchange(&self, call: &Call<'_>) -> Result<Option<Response>, FetchError> {
        let Call { method, repo, path, accept, bounded } = call;
        let mut answered = false;
        loop {
            let mut trace = reqwest::header::HeaderMap::new();
            crate::telemetry::carry(&mut trace);
            let mut request = self.client.request(method.clone(), format!("{}{path}", self.base)).headers(trace);
            if *bounded {
                request = request.timeout(REQUEST_TIMEOUT);
            }
            if let Some(accept) = accept {
                request = request.header(ACCEPT, *accept);
            }
            if let Some(auth) = self.authorization(repo) {
                request = request.header(AUTHORIZATION, auth);
            }
            let response = request.send().await.map_err(|e| FetchError::Unreachable(describe(&e)))?;
            // The upstream span's (the last answer, after a challenge).
            tracing::Span::current().record("http.response.status_code", response.status().as_u16());
            match response.status() {
                s if s.is_success() => return Ok(Some(response)),
                StatusCode::NOT_FOUND => return Ok(None),
                StatusCode::UNAUTHORIZED if !answered => {
                    let challenge = response
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(challenge::parse)
                        .ok_or_else(|| FetchError::Refused("401 with no challenge berth can answer".into()))?;
                    self.answer(challenge, repo).await?;
                    answered = true;
                }
                // Docker Hub answers a repository that does not exist this way,
                // even to a valid token.
                StatusCode::UNAUTHORIZED if insufficient_scope(&response) => return Ok(None),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(FetchError::Refused(format!("{} for {path}", response.status())));
                }
                StatusCode::TOO_MANY_REQUESTS => return Err(FetchError::Status(response.status().as_u16())),
                s => return Err(FetchError::Status(s.as_u16())),
            }
        }
    }

    fn authorization(&self, repo: &str) -> Option<String> {
        let auth = self.auth.lock().unwrap();
        if let Some((token, until)) = auth.tokens.get(repo)
            && Instant::now() < *until
        {
            return Some(format!("Bearer {token}"));
        }
        if auth.basic { self.basic() } else { None }
    }

    fn basic(&self) -> Option<String> {
        let (user, password) = self.credentials.as_ref()?;
        Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))))
    }

    async fn answer(&self, challenge: Challenge, repo: &str) -> Result<(), FetchError> {
        match challenge {
            Challenge::Basic => {
                if self.credentials.is_none() {
                    return Err(FetchError::Refused("the upstream wants credentials and none are set".into()));
                }
                self.auth.lock().unwrap().basic = true;
            }
            Challenge::Bearer { realm, service } => {
                // Credentials never travel in clear from an upstream reached over TLS.
                if self.base.starts_with("https://") && !realm.starts_with("https://") {
                    return Err(FetchError::Refused(format!("a token realm without TLS: {realm}")));
                }
                let (token, life) = self.token(&realm, service.as_deref(), repo).await?;
                let mut auth = self.auth.lock().unwrap();
                if auth.tokens.len() >= MAX_TOKENS {
                    let now = Instant::now();
                    auth.tokens.retain(|_, (_, until)| *until > now);
                    if auth.tokens.len() >= MAX_TOKENS {
                        auth.tokens.clear();
                    }
                }
                // Used until shortly before it expires.
                let until = Instant::now() + life.saturating_sub(life / 10);
                auth.tokens.insert(repo.to_owned(), (token, until));
            }
        }
        Ok(())
    }

    /// A pull token for `repo` from the token server, with the credentials if
    /// any (anonymous tokens otherwise, as Docker Hub gives for public images).
    async fn token(&self, realm: &str, service: Option<&str>, repo: &str) -> Result<(String, Duration), FetchError> {
        let url = token_url(realm, service, repo);
        let mut request = self.client.get(url).timeout(REQUEST_TIMEOUT);
        if let Some(basic) = self.basic() {
            request = request.header(AUTHORIZATION, basic);
        }
        let response = request.send().await.map_err(|e| FetchError::Unreachable(describe(&e)))?;
        if !response.status().is_success() {
            return Err(FetchError::Refused(format!("the token server answered {}", response.status())));
        }
        let body = read_limited(response, 1 << 20).await?;
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| FetchError::Refused(format!("the token server's answer is not a token: {e}")))?;
        let token = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| FetchError::Refused("the token server sent no token".into()))?;
        Ok((token, Duration::from_secs(answer.expires_in.unwrap_or(DEFAULT_TOKEN_SECS).clamp(10, 3600))))
    }
}

fn insufficient_scope(response: &Response) -> bool {
    response
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("error=\"insufficient_scope\""))
}

fn token_url(realm: &str, service: Option<&str>, repo: &str) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("scope", &format!("repository:{repo}:pull"));
    if let Some(service) = service {
        query.append_pair("service", service);
    }
    let separator = if realm.contains('?') { '&' } else { '?' };
    format!("{realm}{separator}{}", query.finish())
}

/// Reads a body of at most `max` bytes.
async fn read_limited(mut response: Response, max: u64) -> Result<bytes::Bytes, FetchError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| FetchError::Unreachable(describe(&e)))? {
        if (buf.len() + chunk.len()) as u64 > max {
            return Err(FetchError::TooLarge(max));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
