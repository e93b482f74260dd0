//! TLS for the SSE listener: rustls with ALPN `h2` and `http/1.1`, from PEM files or a
//! self-signed certificate for localhost generated at start.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

use crate::config::TlsFiles;

/// Why TLS could not be set up; the process stops before binding.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// rustls refused the certificate or key.
    #[error("certificate or key refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The self-signed certificate could not be generated.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A server TLS configuration and the leaf certificate it presents.
pub struct Tls {
    /// The rustls configuration with ALPN set.
    pub config: Arc<rustls::ServerConfig>,
    /// The DER of the leaf certificate (clients in tests trust it directly).
    pub cert_der: Vec<u8>,
    /// True when the certificate was generated at start.
    pub self_signed: bool,
}

/// Builds the server configuration from the files, or a self-signed one when none are given.
pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
    let (chain, key, self_signed) = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => (read_chain(cert)?, read_key(key)?, false),
        _ => {
            let names = vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
                "::1".to_string(),
            ];
            let generated = rcgen::generate_simple_self_signed(names)?;
            let key = PrivateKeyDer::Pkcs8(generated.key_pair.serialize_der().into());
            (vec![generated.cert.der().clone()], key, true)
        }
    };
    let cert_der = chain[0].to_vec();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Tls {
        config: Arc::new(config),
        cert_der,
        self_signed,
    })
}

fn file_error(path: &Path, why: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if chain.is_empty() {
        return Err(file_error(path, "no CERTIFICATE block found"));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_has_alpn() {
        let tls = load(&TlsFiles::default()).unwrap();
        assert!(tls.self_signed);
        assert_eq!(
            tls.config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn missing_files_name_the_path() {
        let files = TlsFiles {
            cert: Some("/nonexistent/c.pem".into()),
            key: Some("/nonexistent/k.pem".into()),
        };
        let err = load(&files).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/c.pem"), "{err}");
    }
}
