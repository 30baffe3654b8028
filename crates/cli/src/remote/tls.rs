//! The one TLS configuration of the remote commands: the built-in web
//! roots plus the certificates of a CA file, always verified. reqwest and
//! the console's WebSocket both use it, so a CA file works for both.

use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::error::{Error, Result};

pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
        let bad = |why: String| Error::Usage(format!("{}: {why}", path.display()));
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not a PEM CA file: {e}")))?;
        if certs.is_empty() {
            return Err(bad("no certificate in it".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
        }
    }
    // The provider named, not looked up: reqwest and tungstenite both
    // build on this rustls, and a second provider enabled anywhere in the
    // build would make the process-wide default ambiguous.
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Failed(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").expect("write");
        let err = client_config(Some(&empty)).expect_err("refused");
        assert_eq!(err.exit_code(), 2, "{err}");
        let missing = dir.path().join("missing.pem");
        assert!(client_config(Some(&missing)).is_err());
        assert!(client_config(None).is_ok());
    }
}
