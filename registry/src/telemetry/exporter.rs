//! The OTLP span exporter the standard environment describes: the protocol
//! (`http/protobuf`, the default, `http/json` or `grpc`), the endpoint,
//! headers and timeout (which the exporter reads itself), and the TLS files
//! it does not read: `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE` (a CA trusted
//! besides the system's roots) and `..._CLIENT_CERTIFICATE` with
//! `..._CLIENT_KEY` (berth's identity for mutual TLS), all PEM.

use std::path::PathBuf;
use std::time::Duration;

use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig, Identity};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig, WithTonicConfig};

use super::logged::Logged;
use super::{Env, TelemetryError};
use crate::error_chain::describe;

/// The first of `names` set to something other than blanks, trimmed (the
/// signal's own variable comes first: it wins over the general one).
fn setting(var: Env, names: [&str; 2]) -> Option<String> {
    names.iter().find_map(|k| var(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()))
}

/// The protocol asked for, checked.
fn protocol(var: Env) -> Result<Protocol, TelemetryError> {
    match setting(var, ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]).as_deref() {
        None | Some("http/protobuf") => Ok(Protocol::HttpBinary),
        Some("http/json") => Ok(Protocol::HttpJson),
        Some("grpc") => Ok(Protocol::Grpc),
        Some(other) => Err(TelemetryError::Protocol(other.to_owned())),
    }
}

/// What starts a PEM certificate.
const PEM_CERTIFICATE: &[u8] = b"-----BEGIN CERTIFICATE-----";

/// The TLS files for the collector, read at start.
#[derive(Debug, Default, PartialEq)]
struct Tls {
    /// PEM certificates trusted besides the system's roots.
    ca: Option<Vec<u8>>,
    /// Certificate chain and key (PEM) presented to a collector that asks.
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl Tls {
    fn from_env(var: Env) -> Result<Tls, TelemetryError> {
        let file = |names| {
            let read = |path: String| std::fs::read(&path).map_err(|e| TelemetryError::File(PathBuf::from(path), e));
            setting(var, names).map(read).transpose()
        };
        let names = ["OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"];
        let ca = file(names)?;
        // A DER file, or any without a PEM certificate, would trust nothing.
        if ca.as_ref().is_some_and(|pem| !pem.windows(PEM_CERTIFICATE.len()).any(|w| w == PEM_CERTIFICATE)) {
            return Err(TelemetryError::NoCertificate(setting(var, names).unwrap_or_default().into()));
        }
        let cert = file(["OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"])?;
        let key = file(["OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY"])?;
        let client = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err(TelemetryError::ClientIdentity),
        };
        Ok(Tls { ca, client })
    }
}

/// The span exporter for the protocol asked for, and its timeout. The
/// endpoint's scheme (gRPC) and the timeout are settled here and given to the
/// exporter, which would otherwise read them again by rules of its own.
pub(super) fn from_env(var: Env) -> Result<(Logged<SpanExporter>, Duration), TelemetryError> {
    let (protocol, tls, timeout) = (protocol(var)?, Tls::from_env(var)?, timeout(var));
    let exporter = match protocol {
        Protocol::Grpc => {
            // tonic's channel runs on the runtime it starts in; the batch
            // thread's exports are served there.
            tokio::runtime::Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
            let grpc = SpanExporter::builder().with_tonic().with_protocol(protocol).with_timeout(timeout);
            let (endpoint, over_tls) = grpc_endpoint(var);
            let grpc = match endpoint {
                Some(endpoint) => grpc.with_endpoint(endpoint),
                None => grpc,
            };
            if over_tls { grpc.with_tls_config(tonic_tls(tls)).build() } else { grpc.build() }
        }
        _ => {
            let http = SpanExporter::builder().with_http().with_protocol(protocol).with_timeout(timeout);
            if tls == Tls::default() { http.build() } else { http.with_http_client(http_client(tls, timeout)?).build() }
        }
    };
    let exporter = exporter.map_err(|e| TelemetryError::Exporter(describe(&e)))?;
    Ok((Logged::new(exporter), timeout))
}

/// The gRPC endpoint with its scheme, and whether it is TLS: an `https://`
/// one, or one without a scheme unless `OTEL_EXPORTER_OTLP_[TRACES_]INSECURE`
/// is true (the specification's rule).
fn grpc_endpoint(var: Env) -> (Option<String>, bool) {
    let endpoint = setting(var, ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]);
    let insecure = setting(var, ["OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE"]);
    let insecure = insecure.is_some_and(|i| i.eq_ignore_ascii_case("true"));
    match endpoint {
        None => (None, false),
        Some(e) if e.to_ascii_lowercase().starts_with("https://") => (Some(e), true),
        Some(e) if e.contains("://") => (Some(e), false),
        Some(e) if insecure => (Some(format!("http://{e}")), false),
        Some(e) => (Some(format!("https://{e}")), true),
    }
}

/// TLS for gRPC. Left to itself the exporter would trust no root at all:
/// the system's (`SSL_CERT_FILE` honoured), as over HTTP, and the CA file.
/// tonic refuses to start without system roots even when a CA file is
/// given, so with one they are added only when there are some.
fn tonic_tls(tls: Tls) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new();
    if tls.ca.is_none() || !rustls_native_certs::load_native_certs().certs.is_empty() {
        config = config.with_native_roots();
    }
    if let Some(ca) = tls.ca {
        config = config.ca_certificate(Certificate::from_pem(ca));
    }
    if let Some((cert, key)) = tls.client {
        config = config.identity(Identity::from_pem(cert, key));
    }
    config
}

/// The export timeout (`OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT` in
/// milliseconds, the first that parses; 10 s by default).
fn timeout(var: Env) -> Duration {
    let ms = ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"]
        .iter()
        .find_map(|k| var(k).and_then(|v| v.trim().parse().ok()));
    Duration::from_millis(ms.unwrap_or(10_000))
}

/// A blocking HTTP client trusting the CA file besides the system's roots
/// and presenting the client identity. Built on a thread of its own, as the
/// exporter builds its default one: reqwest's blocking client must not be
/// made on an async runtime's thread.
fn http_client(tls: Tls, timeout: Duration) -> Result<reqwest::blocking::Client, TelemetryError> {
    let build = move || {
        let mut builder = reqwest::blocking::Client::builder().timeout(timeout);
        if let Some(ca) = &tls.ca {
            for cert in reqwest::Certificate::from_pem_bundle(ca)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = &tls.client {
            builder = builder.identity(reqwest::Identity::from_pem(&[cert.as_slice(), b"\n", key].concat())?);
        }
        builder.build()
    };
    let built = std::thread::spawn(build).join().map_err(|_| TelemetryError::Exporter("building the client".into()))?;
    built.map_err(|e| TelemetryError::Exporter(format!("the collector's TLS files: {}", describe(&e))))
}

#[cfg(test)]
mod tests {
    use super::super::tests::env;
    use super::*;

    #[test]
    fn http_protobuf_by_default_json_or_grpc_when_asked_and_nothing_else() {
        let asked = |pairs: &[(&str, &str)]| protocol(&env(pairs)).ok();
        assert_eq!(asked(&[]), Some(Protocol::HttpBinary));
        assert_eq!(asked(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]), Some(Protocol::HttpBinary));
        assert_eq!(asked(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]), Some(Protocol::Grpc));
        assert_eq!(asked(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]), Some(Protocol::HttpJson));
        let thrift = protocol(&env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")]));
        assert!(matches!(thrift, Err(TelemetryError::Protocol(_))));
        let traces_win =
            [("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"), ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")];
        assert_eq!(asked(&traces_win), Some(Protocol::HttpBinary));
        let empty = [("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", ""), ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")];
        assert_eq!(asked(&empty), Some(Protocol::Grpc), "an empty variable is no setting");
    }

    #[test]
    fn tls_files_are_read_at_start_and_a_client_certificate_needs_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = (dir.path().join("ca.pem"), dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let pem = "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n";
        for (path, text) in [(&ca, pem), (&cert, "CERT"), (&key, "KEY")] {
            std::fs::write(path, text).unwrap();
        }
        let (ca, cert, key) = (ca.to_str().unwrap(), cert.to_str().unwrap(), key.to_str().unwrap());
        assert_eq!(Tls::from_env(&env(&[])).unwrap(), Tls::default());
        let both = [
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", ca),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert),
            ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", key),
        ];
        let tls = Tls::from_env(&env(&both)).unwrap();
        assert_eq!(tls.ca.as_deref(), Some(pem.as_bytes()), "the traces' own variable wins");
        assert_eq!(tls.client, Some((b"CERT".to_vec(), b"KEY".to_vec())));
        let alone = Tls::from_env(&env(&[("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", cert)]));
        assert!(matches!(alone, Err(TelemetryError::ClientIdentity)));
        let missing = Tls::from_env(&env(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")]));
        assert!(matches!(missing, Err(TelemetryError::File(p, _)) if p.ends_with("ca.pem")));
        let der = Tls::from_env(&env(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", key)]));
        assert!(matches!(der, Err(TelemetryError::NoCertificate(p)) if p.ends_with("key.pem")), "no PEM certificate");
    }

    #[test]
    fn grpc_speaks_tls_to_https_and_schemeless_endpoints_unless_insecure() {
        let grpc = |pairs: &[(&str, &str)]| grpc_endpoint(&env(pairs));
        let https = |e: &str| (Some(e.to_owned()), true);
        assert_eq!(grpc(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "HTTPS://c:4317")]), https("HTTPS://c:4317"));
        assert_eq!(grpc(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]), (Some("http://c:4317".into()), false));
        assert_eq!(grpc(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317")]), https("https://c:4317"));
        let insecure = [("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317"), ("OTEL_EXPORTER_OTLP_INSECURE", "TRUE")];
        assert_eq!(grpc(&insecure), (Some("http://c:4317".into()), false));
        let blank = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", " "),
            ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
        ];
        assert_eq!(grpc(&blank), (Some("http://c:4317".into()), false), "a blank variable is no setting");
        let traces =
            [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"), ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://b")];
        assert_eq!(grpc(&traces), https("https://b"), "the traces' own endpoint wins");
    }

    #[test]
    fn the_timeout_is_the_exporters() {
        assert_eq!(timeout(&env(&[])), Duration::from_secs(10));
        assert_eq!(timeout(&env(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")])), Duration::from_millis(2500));
        let both = [("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"), ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700")];
        assert_eq!(timeout(&env(&both)), Duration::from_millis(700));
        let invalid = [("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"), ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "abc")];
        assert_eq!(timeout(&env(&invalid)), Duration::from_millis(2500), "the first that parses");
    }
}
