//! TLS for `tls://` (and `ssl://`) endpoints: rustls with the *ring* provider.
//!
//! The publisher verifies the worker's certificate against the trust roots given with
//! [`PublisherBuilder::tls_root_certificates_pem`](crate::PublisherBuilder::tls_root_certificates_pem)
//! or, when none are given, the operating system's trust store; the name checked is the host of
//! the endpoint URL (a DNS name or an IP address). A client certificate, for workers that require
//! one (`--tls-client-ca`), comes from
//! [`PublisherBuilder::tls_client_auth_pem`](crate::PublisherBuilder::tls_client_auth_pem).
//!
//! The PEM helpers here are shared with the worker, which builds its server side from them.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What can be wrong with TLS material.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    /// A PEM input holds no certificate.
    #[error("{what}: no PEM certificate found")]
    NoCertificate {
        /// Which input.
        what: String,
    },
    /// A PEM input holds no private key (PKCS#8, PKCS#1 or SEC1).
    #[error("{what}: no PEM private key found")]
    NoKey {
        /// Which input.
        what: String,
    },
    /// A PEM input could not be parsed.
    #[error("{what}: {message}")]
    Pem {
        /// Which input.
        what: String,
        /// The parser's complaint.
        message: String,
    },
    /// rustls refused the material (a certificate that is not a CA, a key that does not match
    /// its certificate, …).
    #[error("{what}: {message}")]
    Rejected {
        /// Which input.
        what: String,
        /// rustls' complaint.
        message: String,
    },
    /// `tls://` endpoints were given without trust roots, and the system has none.
    #[error(
        "no TLS trust roots: the system trust store is empty or unreadable ({0}); give the workers' CA with tls_root_certificates_pem"
    )]
    NoTrustRoots(String),
}

/// Every certificate in a PEM document, in order (a chain: leaf first).
pub fn certificates_from_pem(
    pem: &[u8],
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: what.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM document.
pub fn private_key_from_pem(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            what: what.to_owned(),
        },
        e => TlsError::Pem {
            what: what.to_owned(),
            message: e.to_string(),
        },
    })
}

/// A root store holding every certificate of `pem`.
pub fn root_store_from_pem(pem: &[u8], what: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates_from_pem(pem, what)? {
        roots.add(cert).map_err(|e| TlsError::Rejected {
            what: what.to_owned(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The ring crypto provider, named explicitly so that no process-wide default is needed.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The publisher's client configuration.
pub(crate) fn client_config(
    roots_pem: &[Vec<u8>],
    client_auth: Option<&(Vec<u8>, Vec<u8>)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    if roots_pem.is_empty() {
        let found = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map_or_else(|| "no certificates".to_owned(), ToString::to_string);
            return Err(TlsError::NoTrustRoots(why));
        }
    } else {
        for pem in roots_pem {
            for cert in certificates_from_pem(pem, "TLS root certificates")? {
                roots.add(cert).map_err(|e| TlsError::Rejected {
                    what: "TLS root certificates".to_owned(),
                    message: e.to_string(),
                })?;
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rejected {
            what: "TLS configuration".to_owned(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots);
    let config = match client_auth {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => builder
            .with_client_auth_cert(
                certificates_from_pem(cert_pem, "TLS client certificate")?,
                private_key_from_pem(key_pem, "TLS client key")?,
            )
            .map_err(|e| TlsError::Rejected {
                what: "TLS client certificate".to_owned(),
                message: e.to_string(),
            })?,
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_empty_pem_are_named_errors() {
        assert!(matches!(
            certificates_from_pem(b"", "ca.pem"),
            Err(TlsError::NoCertificate { what }) if what == "ca.pem"
        ));
        assert!(matches!(
            private_key_from_pem(b"hello", "key.pem"),
            Err(TlsError::NoKey { .. })
        ));
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            certificates_from_pem(broken, "x"),
            Err(TlsError::Pem { .. })
        ));
    }

    #[test]
    fn the_test_ca_loads_and_a_mismatched_client_key_is_refused() {
        let ca = include_bytes!("../../testdata/tls/ca.pem");
        let cert = include_bytes!("../../testdata/tls/client.pem");
        let key = include_bytes!("../../testdata/tls/client.key");
        let other_key = include_bytes!("../../testdata/tls/server.key");
        assert_eq!(root_store_from_pem(ca, "ca").unwrap().len(), 1);
        client_config(&[ca.to_vec()], Some(&(cert.to_vec(), key.to_vec()))).unwrap();
        let err =
            client_config(&[ca.to_vec()], Some(&(cert.to_vec(), other_key.to_vec()))).unwrap_err();
        assert!(matches!(err, TlsError::Rejected { .. }), "{err}");
    }
}
