//! TLS and mutual TLS on the gRPC port, end to end: certificates made for
//! the test (rcgen), the real binary, tonic clients over TLS, and a raw
//! rustls handshake to see which certificate the server presents. A
//! rotation of the files while a stream is open changes the certificate
//! for new connections and leaves the stream alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tend_api::events::v1 as events;
use tend_api::events::v1::event_stream_service_client::EventStreamServiceClient;
use tend_api::practice::v1::practice_log_service_client::PracticeLogServiceClient;
use tend_testkit::fresh_database;
use tend_tests::pki::Pki;
use tend_tests::{TendProcess, bearer};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const CLINIC: &str = "tend_test_token_tls_clinic";
const OTHER: &str = "tend_test_token_tls_other";

fn tokens() -> String {
    format!(
        "clinic={},other={}",
        tend_auth::TokenHash::of(CLINIC),
        tend_auth::TokenHash::of(OTHER)
    )
}

async fn tls_channel(
    server: &TendProcess,
    pki: &Pki,
    identity: Option<Identity>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Channel::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// The fingerprint of the certificate a fresh handshake is given.
async fn presented(server: &TendProcess, pki: &Pki) -> String {
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from(pem_der(&pki.ca_pem));
    roots.add(ca).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
    hex::encode(Sha256::digest(leaf.as_ref()))
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn tls_serves_and_a_rotation_reaches_new_connections_while_a_stream_stays_open() {
    let db = fresh_database().await;
    let pki = Pki::new();
    let first = pki.write_server();
    let (cert, key) = (pki.path("tls.crt"), pki.path("tls.key"));
    let tokens = tokens();
    let server = TendProcess::start(&[
        ("TEND_DATABASE_URL", db.url.as_str()),
        ("TEND_AUTH_TOKENS", tokens.as_str()),
        ("TEND_TLS_CERT", cert.to_str().unwrap()),
        ("TEND_TLS_KEY", key.to_str().unwrap()),
        ("TEND_TLS_RELOAD_SECONDS", "1"),
        ("TEND_HEALTH_LISTEN", "127.0.0.1:0"),
    ]);
    // Probes that cannot speak TLS ask plain health on its own port.
    let health_addr = server
        .banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("health for probes (plain gRPC): "))
        .expect("the banner names the health port")
        .to_owned();
    let plain_health = Channel::from_shared(format!("http://{health_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = tonic_health::pb::health_client::HealthClient::new(plain_health)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    assert!(
        server
            .banner
            .iter()
            .any(|l| l.contains(&format!("TLS, certificate sha256:{first}"))),
        "{:?}",
        server.banner
    );
    assert_eq!(presented(&server, &pki).await, first);

    // Plain text to a TLS port gets nowhere.
    let plain = tonic::transport::Channel::from_shared(server.endpoint())
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        let e = PracticeLogServiceClient::new(plain)
            .log_practice(bearer(CLINIC, tend_tests::practice_request("p-1")))
            .await
            .unwrap_err();
        assert_ne!(e.code(), Code::Ok);
    }

    let channel = tls_channel(&server, &pki, None).await.unwrap();
    let mut stream = EventStreamServiceClient::new(channel.clone())
        .subscribe(bearer(
            CLINIC,
            events::SubscribeRequest {
                categories: vec!["practice".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut practice_client = PracticeLogServiceClient::new(channel.clone());
    practice_client
        .log_practice(bearer(CLINIC, tend_tests::practice_request("p-1")))
        .await
        .unwrap();
    next_event(&mut stream).await;

    // cert-manager rotates the files.
    let second = pki.write_server();
    assert_ne!(first, second);
    let deadline = Instant::now() + Duration::from_secs(15);
    while presented(&server, &pki).await != second {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never presented"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A new connection works with it, and the stream opened before the
    // rotation still delivers.
    let fresh = tls_channel(&server, &pki, None).await.unwrap();
    PracticeLogServiceClient::new(fresh)
        .log_practice(bearer(CLINIC, tend_tests::practice_request("p-2")))
        .await
        .unwrap();
    next_event(&mut stream).await;

    // Half-written files keep the certificate in use.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ntruncated").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(presented(&server, &pki).await, second);
}

async fn next_event(stream: &mut tonic::Streaming<events::SubscribeResponse>) {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(15), stream.next())
            .await
            .expect("an event within 15 s")
            .expect("the stream stays open")
            .expect("no error");
        if let Some(events::subscribe_response::Message::Event(_)) = message.message {
            return;
        }
    }
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_and_binds_tenants_to_theirs() {
    let db = fresh_database().await;
    let pki = Pki::new();
    pki.write_server();
    let tokens = tokens();
    let (cert, key, ca) = (pki.path("tls.crt"), pki.path("tls.key"), pki.path("ca.crt"));
    let server = TendProcess::start(&[
        ("TEND_DATABASE_URL", db.url.as_str()),
        ("TEND_AUTH_TOKENS", tokens.as_str()),
        ("TEND_TLS_CERT", cert.to_str().unwrap()),
        ("TEND_TLS_KEY", key.to_str().unwrap()),
        ("TEND_TLS_CLIENT_CA", ca.to_str().unwrap()),
        ("TEND_TLS_CLIENT_TENANTS", "clinic=portal.clinic.example"),
    ]);
    assert!(
        server
            .banner
            .iter()
            .any(|l| l.contains("client certificates required")),
        "{:?}",
        server.banner
    );

    // No client certificate: the handshake (or the first call) fails.
    let anonymous = match tls_channel(&server, &pki, None).await {
        Err(_) => None,
        Ok(channel) => Some(
            PracticeLogServiceClient::new(channel)
                .log_practice(bearer(OTHER, tend_tests::practice_request("p-1")))
                .await
                .unwrap_err(),
        ),
    };
    // (TLS 1.3 finishes the client's side of the handshake first: the
    // refusal then arrives as an alert, or as the connection closing, before
    // any gRPC status.)
    if let Some(e) = anonymous {
        assert!(
            matches!(
                e.code(),
                Code::Unknown | Code::Unavailable | Code::Cancelled
            ),
            "{e:?}"
        );
        let transport = std::error::Error::source(&e)
            .is_some_and(|s| s.downcast_ref::<tonic::transport::Error>().is_some());
        assert!(transport, "not refused by the connection: {e:?}");
    }

    // A certificate from another CA is refused the same way.
    let stranger = Pki::new().client("portal.clinic.example");
    let refused = match tls_channel(&server, &pki, Some(stranger)).await {
        Err(_) => true,
        Ok(channel) => PracticeLogServiceClient::new(channel)
            .log_practice(bearer(OTHER, tend_tests::practice_request("p-1")))
            .await
            .is_err(),
    };
    assert!(refused);

    // The portal's certificate: the clinic's token works on it.
    let portal = tls_channel(&server, &pki, Some(pki.client("portal.clinic.example")))
        .await
        .unwrap();
    PracticeLogServiceClient::new(portal.clone())
        .log_practice(bearer(CLINIC, tend_tests::practice_request("p-1")))
        .await
        .unwrap();
    // Another certificate of the same CA: an unbound tenant's token works,
    // the clinic's (bound to the portal) does not.
    let elsewhere = tls_channel(&server, &pki, Some(pki.client("backend.other.example")))
        .await
        .unwrap();
    PracticeLogServiceClient::new(elsewhere.clone())
        .log_practice(bearer(OTHER, tend_tests::practice_request("p-1")))
        .await
        .unwrap();
    let e = PracticeLogServiceClient::new(elsewhere)
        .log_practice(bearer(CLINIC, tend_tests::practice_request("p-2")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("client certificates"), "{e:?}");
}

#[tokio::test]
async fn plain_tcp_with_an_external_database_is_said_loudly() {
    let db = fresh_database().await;
    let tokens = tokens();
    let server = TendProcess::start(&[
        ("TEND_DATABASE_URL", db.url.as_str()),
        ("TEND_AUTH_TOKENS", tokens.as_str()),
    ]);
    assert!(
        server
            .banner
            .iter()
            .any(|l| l.contains("WARNING: plain TCP, no TLS")),
        "{:?}",
        server.banner
    );
}
