//! Certificates for TLS and mTLS tests, made at run time (rcgen, ring): a CA, a server
//! certificate for `localhost` / 127.0.0.1 and a client certificate, both signed by it, and a
//! client certificate from another CA. PEM files in their own temp dir.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};

/// A test PKI on disk.
pub struct TestPki {
    dir: tempfile::TempDir,
}

/// The name the server certificate is for (and a TLS client must ask for).
pub const SERVER_NAME: &str = "localhost";

impl TestPki {
    /// Generates every certificate and key into a new temp dir.
    pub fn generate() -> TestPki {
        let dir = tempfile::Builder::new().prefix("clamgate-pki-").tempdir().expect("pki temp dir");
        let ca = issuer("clamgate test CA");
        let other_ca = issuer("some other CA");
        let server_params = CertificateParams::new(vec![SERVER_NAME.to_string(), "127.0.0.1".to_string()])
            .expect("server params");
        let server_key = KeyPair::generate().expect("server key");
        let server = server_params.signed_by(&server_key, &ca).expect("sign server cert");
        let client_key = KeyPair::generate().expect("client key");
        let client = CertificateParams::new(vec!["envoy.clamgate.test".to_string()])
            .expect("client params")
            .signed_by(&client_key, &ca)
            .expect("sign client cert");
        let stranger_key = KeyPair::generate().expect("stranger key");
        let stranger = CertificateParams::new(vec!["envoy.clamgate.test".to_string()])
            .expect("stranger params")
            .signed_by(&stranger_key, &other_ca)
            .expect("sign stranger cert");
        let write =
            |name: &str, text: String| std::fs::write(dir.path().join(name), text).expect("write PEM");
        write("ca.pem", ca.pem());
        write("server.pem", server.pem());
        write("server.key", server_key.serialize_pem());
        write("client.pem", client.pem());
        write("client.key", client_key.serialize_pem());
        write("stranger.pem", stranger.pem());
        write("stranger.key", stranger_key.serialize_pem());
        TestPki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A file's path as a config string.
    pub fn file(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    /// A file's contents.
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).expect("read PEM")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn issuer(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("self-sign CA")
}
