//! HTTPS: the contract's calls and the patches over TLS, certificates that do not fit, and
//! faults that cut or reset a TLS connection.

use ota_mock_server::{
    Endpoint, Fault, FaultKind, MockServer, ServerError, TestCertificates, TlsConfig, TlsError,
};

use crate::common::{
    TestCerts, access_token, chain, client, client_trusting, demo_catalog, fetch, tls_demo_server,
};

#[tokio::test]
async fn tokens_checks_and_patches_come_over_https() {
    let server = tls_demo_server().await;
    let uri = server.uri();
    assert!(uri.starts_with("https://127.0.0.1:"), "{uri}");
    assert_eq!(uri, format!("https://{}", server.address()));

    let (urls, ids) = chain(&server, "16").await;
    assert_eq!(ids, ["23", "25"]);
    for (url, id) in urls.iter().zip(&ids) {
        let info = server.catalog().patch_by_id(id).unwrap();
        assert_eq!(url, &format!("{uri}{}", info.url_path));
        assert_eq!(fetch(url).await, std::fs::read(&info.file).unwrap());
    }
    let log = server.requests();
    assert_eq!(log.len(), 4, "{log:?}");
    assert!(log.iter().all(|r| r.status == 200));
}

#[tokio::test]
async fn a_der_certificate_and_localhost_work_too() {
    let certs = TestCerts::shared();
    let tls = TlsConfig::from_der(vec![certs.cert_der.clone()], certs.key_der.clone()).unwrap();
    let server = MockServer::start_tls(demo_catalog(), tls).await.unwrap();
    let url = format!(
        "https://localhost:{}/oauth/token?client_id=mobile_1&client_secret=secret_1\
         &grant_type=password&username=aa&password=aa",
        server.address().port()
    );
    let response = client().get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_is_refused() {
    let server = tls_demo_server().await;
    let stranger = TestCertificates::generate();
    let error = client_trusting(&stranger.ca_pem)
        .get(format!("{}/oauth/token", server.uri()))
        .send()
        .await
        .expect_err("the certificate is not trusted");
    assert!(error.status().is_none());
    assert!(server.requests().is_empty());
    // The server goes on serving the clients that trust it.
    access_token(&server).await;
}

#[tokio::test]
async fn unusable_certificates_and_keys_are_refused() {
    let certs = TestCerts::shared();
    let stranger = TestCertificates::generate();
    let mismatched =
        TlsConfig::from_pem(certs.cert_pem.as_bytes(), stranger.key_pem.as_bytes()).unwrap();
    let error = MockServer::start_tls(demo_catalog(), mismatched)
        .await
        .expect_err("the key does not fit the certificate");
    assert!(
        matches!(error, ServerError::Tls(TlsError::Rustls(_))),
        "{error}"
    );

    let error = TlsConfig::from_pem(b"no pem here", certs.key_pem.as_bytes()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the certificate chain holds no certificate"
    );
    let error = TlsConfig::from_pem(certs.cert_pem.as_bytes(), b"").unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("the private key is not valid pem"),
        "{error}"
    );
    assert!(TlsConfig::from_der(vec![certs.cert_der.clone()], b"junk".to_vec()).is_err());

    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = certs.write_pem(dir.path()).expect("write PEM");
    let missing = dir.path().join("missing.key");
    let error = TlsConfig::from_pem_files(&cert, &missing).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with(&format!("cannot read {}", missing.display())),
        "{error}"
    );
}

#[tokio::test]
async fn faults_cut_and_reset_tls_connections() {
    let server = tls_demo_server().await;
    let (urls, ids) = chain(&server, "17").await;
    let expected = std::fs::read(&server.catalog().patch_by_id(&ids[0]).unwrap().file).unwrap();

    server.inject(Fault::new(Endpoint::Patch, FaultKind::Reset));
    let error = client().get(&urls[0]).send().await.expect_err("no answer");
    assert!(error.status().is_none());
    let last = server.requests().pop().unwrap();
    assert_eq!((last.status, last.bytes_sent), (0, 0));

    server.inject(Fault::new(
        Endpoint::Patch,
        FaultKind::Truncate { after: 1000 },
    ));
    let mut response = client().get(&urls[0]).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), Some(expected.len() as u64));
    let mut body = Vec::new();
    let failed = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    assert!(failed, "the client must see an error");
    assert_eq!(body, &expected[..1000]);

    // Once the faults are used up, the same connection setup serves the whole patch.
    assert_eq!(fetch(&urls[0]).await, expected);
}
