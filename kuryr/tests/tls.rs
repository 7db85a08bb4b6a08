//! `kuryr server --tls-cert --tls-key` with a CA and a certificate made here, and the
//! kuryr client as the agent uses it: it trusts the server through the CA option and
//! refuses it without.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::Server;
use futures::StreamExt;
use kuryr_client::{Client, ClientConfig, ClientError, Credentials};
use kuryr_model::AgentReport;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A CA, a server certificate it signed for 127.0.0.1 and localhost, and a second CA
/// that has nothing to do with the server.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

fn make_pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, pem: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).expect("write pem");
        p
    };
    let issuer = ca("kuryr test CA");
    let other = ca("some other CA");
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "kuryr server");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    Pki {
        ca: write("ca.pem", issuer.pem()),
        other_ca: write("other-ca.pem", other.pem()),
        cert: write("server.pem", cert.pem()),
        key: write("server.key", key.serialize_pem()),
        _dir: dir,
    }
}

fn tls_server(pki: &Pki) -> (Server, String) {
    let s = Server::start(&[
        "--tls-cert",
        pki.cert.to_str().expect("utf-8 path"),
        "--tls-key",
        pki.key.to_str().expect("utf-8 path"),
    ]);
    let url = format!("https://127.0.0.1:{}", s.port);
    (s, url)
}

/// The agent's credentials: OS_* variables with password login, and OS_CACERT if given.
fn agent_credentials(url: &str, cacert: Option<&Path>) -> Credentials {
    let mut vars: HashMap<&str, String> = HashMap::from([
        ("OS_AUTH_URL", format!("{url}/identity/v3")),
        ("OS_USERNAME", "admin".into()),
        ("OS_PASSWORD", "test-admin-pw".into()),
        ("OS_PROJECT_NAME", "admin".into()),
        ("OS_USER_DOMAIN_NAME", "Default".into()),
        ("OS_PROJECT_DOMAIN_NAME", "Default".into()),
    ]);
    if let Some(ca) = cacert {
        vars.insert("OS_CACERT", ca.display().to_string());
    }
    Credentials::from_vars(|k| vars.get(k).cloned()).expect("credentials")
}

fn report(host: &str) -> AgentReport {
    AgentReport {
        host: host.into(),
        tunneling_ip: "127.0.0.1".into(),
        interface_mappings: Default::default(),
        started_at_unix: 1,
        devices: 0,
    }
}

fn assert_certificate_refused(r: Result<impl std::fmt::Debug, ClientError>) {
    match r {
        Err(ClientError::Unreachable(why)) => {
            assert!(why.contains("certificate"), "{why}")
        }
        other => panic!("expected a certificate error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_agent_client_trusts_the_server_through_the_ca_option_only() {
    let pki = make_pki();
    let (_s, url) = tls_server(&pki);

    // With the CA: login, a catalog that names the https endpoint, a heartbeat and the
    // host watch, as the agent does them.
    let client = Client::new(
        agent_credentials(&url, Some(&pki.ca)),
        ClientConfig::default(),
    )
    .expect("client");
    let network = client.network_url().await.expect("login over https");
    assert!(
        network.starts_with(&format!("{url}/networking")),
        "{network}"
    );
    let agent = client.heartbeat(&report("h1")).await.expect("heartbeat");
    assert_eq!(agent.host, "h1");
    let mut watch = client.watch_host("h1", 0).await.expect("watch");
    let first = watch.next().await.expect("a frame").expect("a good frame");
    assert!(first.revision > 0, "{first:?}");

    // Without it the system roots do not know this CA: refused.
    let client =
        Client::new(agent_credentials(&url, None), ClientConfig::default()).expect("client");
    assert_certificate_refused(client.network_url().await);
    // Nor does a CA bundle that did not sign the server's certificate.
    let client = Client::new(
        agent_credentials(&url, Some(&pki.other_ca)),
        ClientConfig::default(),
    )
    .expect("client");
    assert_certificate_refused(client.network_url().await);
}

#[tokio::test]
async fn plain_http_is_not_served_on_the_tls_listener() {
    let pki = make_pki();
    let (s, url) = tls_server(&pki);
    let c = reqwest::Client::new();
    let plain = c
        .get(format!("http://127.0.0.1:{}/healthz", s.port))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
    // Positive control: the same probe over https with the CA.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).expect("ca")).expect("ca");
    let c = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .expect("https client");
    let r = c.get(format!("{url}/healthz")).send().await.expect("https");
    assert_eq!(r.status(), 200);
}
