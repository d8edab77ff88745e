//! The worker's TLS side: a rustls server configuration from PEM files, and the first-byte
//! check that tells a TLS ClientHello from a plaintext HELLO.
//!
//! A TLS worker reads one byte before the handshake: a TLS record starts with `0x16`
//! (handshake), a plaintext shardtally frame with the high byte of its length prefix (`0x00`
//! for any frame under 16 MiB). A plaintext publisher gets a plaintext `ERROR TlsRequired` frame
//! it can understand, instead of a TLS alert it cannot.

use std::path::Path;
use std::sync::Arc;

use shardtally_publisher::tls::{certificates_from_pem, private_key_from_pem, root_store_from_pem};

use crate::config::ConfigError;

/// The first byte of a TLS handshake record.
pub(crate) const TLS_HANDSHAKE_RECORD: u8 = 0x16;

fn read(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError::invalid(key, format!("cannot read {}: {e}", path.display())))
}

/// Builds the server configuration; every error names its flag and file.
pub(crate) fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    fn invalid(flag: &'static str) -> impl Fn(shardtally_publisher::tls::TlsError) -> ConfigError {
        move |e| ConfigError::invalid(flag, e.to_string())
    }
    let chain = certificates_from_pem(&read("tls-cert", cert)?, &cert.display().to_string())
        .map_err(invalid("tls-cert"))?;
    let private_key = private_key_from_pem(&read("tls-key", key)?, &key.display().to_string())
        .map_err(invalid("tls-key"))?;
    let builder =
        rustls::ServerConfig::builder_with_provider(shardtally_publisher::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::invalid("tls-cert", e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let roots =
                root_store_from_pem(&read("tls-client-ca", path)?, &path.display().to_string())
                    .map_err(invalid("tls-client-ca"))?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                shardtally_publisher::tls::crypto_provider(),
            )
            .build()
            .map_err(|e| ConfigError::invalid("tls-client-ca", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, private_key).map_err(|e| {
        ConfigError::invalid(
            "tls-key",
            format!("{} does not fit {}: {e}", key.display(), cert.display()),
        )
    })?;
    Ok(Arc::new(config))
}
