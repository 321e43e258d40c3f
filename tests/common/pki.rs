//! Test certificates (included as a `#[path]` module by the TLS tests,
//! `tests/redis_prod.rs` and `tests/kafka.rs`, so the other test binaries do
//! not build it): a CA, a server certificate for 127.0.0.1/localhost, a
//! client certificate and a Redis Cluster node certificate (server and
//! client: a node dials the other nodes' cluster bus with it), all signed by
//! that CA, written as PEM files in a temp dir that lives as long as the value.

use std::path::PathBuf;

use crate::common::unique;

pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().expect("pki dir");
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.distinguished_name
            .push(DnType::CommonName, unique("tickerd test CA "));
        let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |name: &str, usages: &[ExtendedKeyUsagePurpose]| {
            let key = KeyPair::generate().expect("key");
            let mut p = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("params");
            p.distinguished_name.push(DnType::CommonName, name);
            p.extended_key_usages = usages.to_vec();
            let cert = p.signed_by(&key, &issuer).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf("server", &[ExtendedKeyUsagePurpose::ServerAuth]);
        let (client_cert, client_key) = leaf("tickerd", &[ExtendedKeyUsagePurpose::ClientAuth]);
        let (node_cert, node_key) = leaf(
            "redis cluster node",
            &[ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        );
        for (name, text) in [
            ("ca.pem", ca_cert.pem()),
            ("server.pem", server_cert),
            ("server.key", server_key),
            ("client.pem", client_cert),
            ("client.key", client_key),
            ("node.pem", node_cert),
            ("node.key", node_key),
        ] {
            std::fs::write(dir.path().join(name), text).expect("write pem");
        }
        Self { dir }
    }

    /// `ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key`,
    /// `node.pem` or `node.key`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}
