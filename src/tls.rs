//! TLS termination material: certificates and keys read from PEM at load, an SNI
//! resolver over them, and the rustls server config (TLS 1.2 and 1.3, ALPN h2 and
//! http/1.1). Reads files; opens no sockets.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocols offered, most preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// One certificate of a listener, as loaded.
#[derive(Clone)]
pub struct Certificate {
    /// The chain's file, resolved against the config file's folder.
    pub cert: PathBuf,
    /// The key's file.
    pub key: PathBuf,
    /// DNS names (and IP addresses) the leaf certificate covers, lowercased.
    pub names: Vec<String>,
    /// When the leaf certificate expires.
    pub not_after: SystemTime,
    /// A digest of the chain and key, so a reload can tell a renewed certificate.
    pub fingerprint: u64,
    key_pair: Arc<CertifiedKey>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("cert", &self.cert)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl Certificate {
    /// True when the certificate's validity has ended.
    pub fn expired(&self) -> bool {
        self.not_after < SystemTime::now()
    }
}

/// A TLS listener's certificates and the rustls config built from them.
#[derive(Clone)]
pub struct Tls {
    /// In file order; the first is the default.
    pub certificates: Vec<Certificate>,
    /// What the acceptor uses for each handshake.
    pub server: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("Tls")
            .field("certificates", &self.certificates)
            .finish()
    }
}

impl PartialEq for Tls {
    fn eq(&self, other: &Self) -> bool {
        let key = |t: &Tls| {
            t.certificates
                .iter()
                .map(|c| c.fingerprint)
                .collect::<Vec<_>>()
        };
        key(self) == key(other)
    }
}

impl Eq for Tls {}

/// Which file of a certificate entry a load error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The certificate chain (`cert`).
    Cert,
    /// The private key (`key`), including a key that does not match.
    Key,
}

/// Reads one certificate chain and its key; `Err` is the file at fault and a
/// sentence naming it.
///
/// # Errors
/// Unreadable or empty files, a key that does not match the certificate, a
/// certificate rustls or X.509 parsing rejects, or one without any name.
pub fn load_certificate(cert: &Path, key: &Path) -> Result<Certificate, (Field, String)> {
    let on_cert = |m: String| (Field::Cert, m);
    let on_key = |m: String| (Field::Key, m);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| on_cert(format!("{}: cannot read certificates: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            on_cert(format!(
                "{}: not a PEM certificate chain: {e}",
                cert.display()
            ))
        })?;
    let Some(leaf) = chain.first() else {
        return Err(on_cert(format!(
            "{}: no certificate in the file",
            cert.display()
        )));
    };
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        on_key(format!(
            "{}: cannot read a private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
            key.display()
        ))
    })?;
    let (names, not_after) =
        describe(leaf).map_err(|e| on_cert(format!("{}: {e}", cert.display())))?;
    if names.is_empty() {
        return Err(on_cert(format!(
            "{}: the certificate has no DNS name or IP address (subjectAltName)",
            cert.display()
        )));
    }
    // The chain identifies the certificate (a key cannot change without it); no key
    // material goes into the digest.
    let mut digest = xxhash_rust::xxh3::Xxh3::new();
    for c in &chain {
        digest.update(c.as_ref());
    }
    let provider = rustls::crypto::ring::default_provider();
    let key_pair = CertifiedKey::from_der(chain, private, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => on_key(format!(
            "{}: the key does not match the certificate {}",
            key.display(),
            cert.display()
        )),
        e => on_key(format!("{}: unusable key: {e}", key.display())),
    })?;
    Ok(Certificate {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        names,
        not_after,
        fingerprint: digest.digest(),
        key_pair: Arc::new(key_pair),
    })
}

/// The leaf's subjectAltName DNS names and IPs, and its expiry.
fn describe(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, SystemTime), String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("cannot read the subjectAltName extension: {e}"))?;
    if let Some(san) = san {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => {
                        names.push(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string())
                    }
                    16 => {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(ip);
                        names.push(std::net::Ipv6Addr::from(b).to_string());
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    Ok((names, UNIX_EPOCH + Duration::from_secs(secs)))
}

/// Builds the listener's rustls config from loaded certificates (at least one).
///
/// # Errors
/// Only if rustls refuses its own safe defaults.
pub fn server_config(certificates: Vec<Certificate>) -> Result<Tls, String> {
    let resolver = Arc::new(SniResolver {
        by_name: certificates
            .iter()
            .map(|c| (c.names.clone(), c.key_pair.clone()))
            .collect(),
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Tls {
        certificates,
        server: Arc::new(server),
    })
}

/// Picks the certificate whose names match the client's SNI: an exact name first,
/// then a wildcard (`*.example.com` covers one label); the first certificate when
/// nothing matches or the client sent no name.
#[derive(Debug)]
struct SniResolver {
    by_name: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl SniResolver {
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(sni) = sni {
            let sni = sni.to_ascii_lowercase();
            let exact = self.by_name.iter().find(|(names, _)| names.contains(&sni));
            let wildcard = || {
                let parent = sni.split_once('.').map(|(_, rest)| rest)?;
                self.by_name
                    .iter()
                    .find(|(names, _)| names.iter().any(|n| n.strip_prefix("*.") == Some(parent)))
            };
            if let Some((_, key)) = exact.or_else(wildcard) {
                return Some(key.clone());
            }
        }
        self.by_name.first().map(|(_, key)| key.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tag: u8) -> Arc<CertifiedKey> {
        // The resolver only compares names; any key value will do for picking.
        let kp = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![format!("t{tag}.test")])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        let der = PrivateKeyDer::try_from(kp.serialize_der()).unwrap();
        Arc::new(
            CertifiedKey::from_der(
                vec![cert.der().clone()],
                der,
                &rustls::crypto::ring::default_provider(),
            )
            .unwrap(),
        )
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let (a, b, c) = (key(1), key(2), key(3));
        let r = SniResolver {
            by_name: vec![
                (vec!["default.test".into()], a.clone()),
                (vec!["*.b.test".into()], b.clone()),
                (vec!["x.b.test".into(), "c.test".into()], c.clone()),
            ],
        };
        let pick = |s: Option<&str>| r.pick(s).unwrap();
        assert!(
            Arc::ptr_eq(&pick(Some("x.b.test")), &c),
            "exact beats wildcard"
        );
        assert!(
            Arc::ptr_eq(&pick(Some("Y.B.TEST")), &b),
            "wildcard, case-insensitive"
        );
        assert!(
            Arc::ptr_eq(&pick(Some("z.y.b.test")), &a),
            "a wildcard covers one label only"
        );
        assert!(Arc::ptr_eq(&pick(Some("unknown.test")), &a));
        assert!(Arc::ptr_eq(&pick(None), &a));
    }
}

/// TLS towards one backend: a client config and the name its certificate must carry.
#[derive(Clone)]
pub struct BackendTls {
    /// The PEM bundle trusted instead of the webpki roots, when set.
    pub ca: Option<PathBuf>,
    /// Sent as SNI and checked against the certificate.
    pub server_name: rustls_pki_types::ServerName<'static>,
    /// Certificates are not checked at all (testing only).
    pub insecure_skip_verify: bool,
    /// What each connection is made with (ALPN http/1.1: backends speak HTTP/1.1).
    pub client: Arc<rustls::ClientConfig>,
    fingerprint: u64,
}

impl fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("BackendTls")
            .field("ca", &self.ca)
            .field("server_name", &self.server_name)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish()
    }
}

impl PartialEq for BackendTls {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
            && self.server_name == other.server_name
            && self.insecure_skip_verify == other.insecure_skip_verify
    }
}

impl Eq for BackendTls {}

/// Builds the client side for a backend: `ca` replaces the webpki roots when given.
///
/// # Errors
/// An unreadable or empty CA bundle, or a server name that is not a DNS name or IP.
pub fn backend(
    ca: Option<&Path>,
    server_name: &str,
    insecure_skip_verify: bool,
) -> Result<BackendTls, String> {
    let server_name = rustls_pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|_| format!("{server_name:?} is not a DNS name or IP address"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let mut digest = xxhash_rust::xxh3::Xxh3::new();
    match ca {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: cannot read the CA bundle: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: not a PEM certificate bundle: {e}", path.display()))?;
            for c in &certs {
                digest.update(c.as_ref());
            }
            let (added, skipped) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "{}: no usable CA certificate in the bundle",
                    path.display()
                ));
            }
            if skipped > 0 {
                tracing::warn!(ca = %path.display(), skipped, "CA certificates that could not be used were left out");
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let mut client = if insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    } else {
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(BackendTls {
        ca: ca.map(Path::to_path_buf),
        server_name,
        insecure_skip_verify,
        client: Arc::new(client),
        fingerprint: digest.digest(),
    })
}

/// Opens TLS over `stream` to `tls`'s backend.
///
/// # Errors
/// The handshake or certificate check failed.
pub async fn connect<S>(
    tls: &BackendTls,
    stream: S,
) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio_rustls::TlsConnector::from(tls.client.clone())
        .connect(tls.server_name.clone(), stream)
        .await
}

/// `insecure_skip_verify: true`: accepts any certificate, still checks signatures.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
