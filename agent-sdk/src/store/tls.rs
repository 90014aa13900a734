//! What the TLS clients of the store layer share (PostgreSQL's connections, the relay
//! client): the crypto provider and the system's trusted roots.

use std::sync::Arc;

use rustls::RootCertStore;

/// The TLS crypto provider of the agent's store connections: the process default when the
/// application installed one (`CryptoProvider::install_default`, e.g. aws-lc-rs for
/// post-quantum key exchange), else rustls' *ring* provider, the one the rest of the tree
/// uses (reqwest's `rustls-tls`, mysql_async's `ring`). Never installs a process default: that
/// is the application's choice.
pub(crate) fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    if let Some(installed) = rustls::crypto::CryptoProvider::get_default() {
        return Arc::clone(installed);
    }
    // rustls 0.23.48 deprecates ring's provider because ring has no post-quantum key
    // exchange; ring offers no other constructor, and the remedy (aws-lc-rs) is the
    // application's to choose, above. Allowed here, in this one place.
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's trusted CA certificates (those `SSL_CERT_FILE` or `SSL_CERT_DIR` name, else the
/// platform's store); empty when there are none. Blocking (reads files).
pub(crate) fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!(error = %e, "a system CA certificate could not be loaded");
    }
    roots.add_parsable_certificates(found.certs);
    roots
}
