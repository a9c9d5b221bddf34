//! gRPC-Web as a browser portal speaks it: Connect's gRPC-Web transport
//! from the npm registry (tests/node), over TLS to the real server, with
//! CORS preflights for the allowed origin and for another. `.ci/run`
//! installs the packages (`npm ci` in tests/node).

use std::path::Path;
use std::process::Command;

use tend_api::practice::v1::practice_log_service_client::PracticeLogServiceClient;
use tend_testkit::fresh_database;
use tend_tests::pki::Pki;
use tend_tests::{TendProcess, bearer};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const TOKEN: &str = "tend_test_token_for_grpc_web";
const PORTAL: &str = "https://portal.clinic.example";

#[tokio::test]
async fn a_browser_portal_calls_over_grpc_web_with_tls_and_cors() {
    let node = Path::new(env!("CARGO_MANIFEST_DIR")).join("node");
    assert!(
        node.join("node_modules/@connectrpc/connect-node").exists(),
        "run `npm ci` in {} first (.ci/run does)",
        node.display()
    );
    let db = fresh_database().await;
    let pki = Pki::new();
    pki.write_server();
    let descriptors = pki.path("tend.binpb");
    std::fs::write(&descriptors, tend_api::FILE_DESCRIPTOR_SET).unwrap();
    let tokens = format!("clinic={}", tend_auth::TokenHash::of(TOKEN));
    let (cert, key) = (pki.path("tls.crt"), pki.path("tls.key"));

    let server = TendProcess::start(&[
        ("TEND_DATABASE_URL", db.url.as_str()),
        ("TEND_AUTH_TOKENS", tokens.as_str()),
        ("TEND_TLS_CERT", cert.to_str().unwrap()),
        ("TEND_TLS_KEY", key.to_str().unwrap()),
        ("TEND_GRPC_WEB_ORIGINS", PORTAL),
    ]);
    // Events for the stream to carry, written by a native gRPC client over
    // HTTP/2 and TLS to the same port.
    let native = Channel::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&pki.ca_pem))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    for participant in ["p-1", "p-2", "p-3"] {
        PracticeLogServiceClient::new(native.clone())
            .log_practice(bearer(TOKEN, tend_tests::practice_request(participant)))
            .await
            .unwrap();
    }
    let out = Command::new("node")
        .arg(node.join("grpc-web.mjs"))
        .arg(&descriptors)
        .arg(format!(
            "https://localhost:{}",
            server.addr.rsplit(':').next().unwrap()
        ))
        .arg(TOKEN)
        .arg(PORTAL)
        .env("NODE_EXTRA_CA_CERTS", pki.path("ca.crt"))
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "node: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // The allowed origin's preflight is answered for it, another's is not.
    assert_eq!(seen["preflight"]["status"], 200, "{seen}");
    assert_eq!(seen["preflight"]["allowOrigin"], PORTAL, "{seen}");
    assert!(
        seen["preflight"]["allowHeaders"]
            .as_str()
            .is_some_and(|h| h.contains("authorization")),
        "{seen}"
    );
    assert!(seen["preflightOther"]["allowOrigin"].is_null(), "{seen}");

    // Calls: unary, refusals as gRPC statuses, a server stream.
    assert_eq!(
        seen["protocols"],
        serde_json::json!(["integration-arc-8w", "msc-8w"]),
        "{seen}"
    );
    assert_eq!(seen["withoutToken"], "Unauthenticated", "{seen}");
    assert_eq!(seen["badArgument"], "InvalidArgument", "{seen}");
    assert!(
        seen["badArgumentMessage"]
            .as_str()
            .is_some_and(|m| m.starts_with("enrollment_id")),
        "{seen}"
    );
    assert_eq!(
        seen["streamed"],
        serde_json::json!(["PracticeLogged", "PracticeLogged", "PracticeLogged"]),
        "{seen}"
    );
}
