//! Certificates and tokens.
//!
//! On first start a node generates a self-signed development certificate (for `localhost`
//! and `127.0.0.1`) and a client token into `{data-dir}/tls/`; clients on the same machine
//! take both from there. Real deployments give `--tls-cert` and `--tls-key` (PEM).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

/// The name clients check the development certificate against.
pub const DEV_SERVER_NAME: &str = "localhost";

/// Where the development files of a data directory are.
#[derive(Debug, Clone)]
pub struct DevFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub token: PathBuf,
    /// The secret behind QUIC stateless resets: the same across restarts, so that a reset from
    /// a restarted node is one its old clients accept. (Measured: clients still notice a
    /// restart by their idle timeout, 4 s, not by a reset; see `client_config`.)
    pub reset_key: PathBuf,
}

impl DevFiles {
    pub fn in_data_dir(data_dir: &Path) -> DevFiles {
        let dir = data_dir.join("tls");
        DevFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            token: dir.join("client-token"),
            reset_key: dir.join("reset-key"),
        }
    }

    /// Creates the development certificate and token if they are missing.
    pub fn ensure(&self) -> Result<(), Error> {
        let io = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { op, path, source }
        };
        if let Some(dir) = self.cert.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        if !self.cert.exists() || !self.key.exists() {
            let names = vec![DEV_SERVER_NAME.to_string(), "127.0.0.1".to_string()];
            let certified =
                rcgen::generate_simple_self_signed(names).map_err(|error| Error::Generate(error.to_string()))?;
            std::fs::write(&self.key, certified.signing_key.serialize_pem()).map_err(io("writing", &self.key))?;
            std::fs::write(&self.cert, certified.cert.pem()).map_err(io("writing", &self.cert))?;
        }
        for secret in [&self.token, &self.reset_key] {
            if !secret.exists() {
                let mut random = [0u8; 24];
                let urandom = Path::new("/dev/urandom");
                let read = std::fs::File::open(urandom).and_then(|mut file| file.read_exact(&mut random));
                read.map_err(io("reading", urandom))?;
                let text: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
                std::fs::write(secret, text).map_err(io("writing", secret))?;
            }
        }
        Ok(())
    }

    pub fn read_reset_key(&self) -> Result<Vec<u8>, Error> {
        let key = std::fs::read_to_string(&self.reset_key).map_err(|source| Error::Io {
            op: "reading",
            path: self.reset_key.clone(),
            source,
        })?;
        Ok(key.trim().as_bytes().to_vec())
    }

    pub fn read_token(&self) -> Result<String, Error> {
        let token = std::fs::read_to_string(&self.token).map_err(|source| Error::Io {
            op: "reading",
            path: self.token.clone(),
            source,
        })?;
        Ok(token.trim().to_string())
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = |why: String| Error::Pem { path: path.to_owned(), what: "certificate", why };
    let certificates: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|error| pem(error.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|error| pem(error.to_string()))?;
    if certificates.is_empty() {
        return Err(pem("no CERTIFICATE block".into()));
    }
    Ok(certificates)
}

/// The server side: the certificate chain and key from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<quinn_proto::ServerConfig>, Error> {
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|error| Error::Pem {
        path: key.to_owned(),
        what: "private key",
        why: error.to_string(),
    })?;
    let mut config =
        quinn_proto::ServerConfig::with_single_cert(chain, key).map_err(|error| Error::TlsConfig(error.to_string()))?;
    let mut transport = quinn_proto::TransportConfig::default();
    transport.max_concurrent_bidi_streams(4u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    config.transport_config(Arc::new(transport));
    Ok(Arc::new(config))
}

/// The client side: trusts the certificates in `anchor` (a CA, or the development
/// certificate itself).
pub fn client_config(anchor: &Path) -> Result<quinn::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates(anchor)? {
        roots.add(certificate).map_err(|error| Error::TlsConfig(error.to_string()))?;
    }
    let mut config = quinn::ClientConfig::with_root_certificates(Arc::new(roots))
        .map_err(|error| Error::TlsConfig(error.to_string()))?;
    // Keep-alives find a dead server (one that cannot send a stateless reset) within the
    // idle timeout.
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(1)));
    let idle = quinn::IdleTimeout::try_from(std::time::Duration::from_secs(4))
        .map_err(|error| Error::TlsConfig(error.to_string()))?;
    transport.max_idle_timeout(Some(idle));
    config.transport_config(Arc::new(transport));
    Ok(config)
}
